"""The model card lists every field, in a stable order, with table cells that stay cells."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date

from lora_pipeline.evaluation.model_card import (
    MODEL_CARD_FIELDS,
    NOT_RECORDED,
    ModelCard,
    render_model_card,
)
from lora_pipeline.evaluation.scores import GateThresholds

SHA = "0123456789abcdef" * 4

CARD = ModelCard(
    character_name="Aiko",
    character_slug="aiko",
    trigger_word="aikochan",
    base_checkpoint="sd15-anime.safetensors",
    release_id=7,
    release_status="candidate",
    lora_file="aiko-r7.safetensors",
    lora_sha256=SHA,
    dataset_version="d3adb33f",
    image_count=42,
    shot_distribution={"far": 8, "close": 10, "unknown": 4, "mid": 20},
    training_parameters={"network_dim": 16, "learning_rate": 0.0001, "epochs": [1, 2, 3]},
    grid_path="evals/aiko/7/grid.png",
    scores={"identity": 0.8123, "clip_score": None, "quality": 0.95, "lora_effect": 0.0123},
    verdict="fail",
    verdict_reasons=["clip_score not measured"],
    thresholds=GateThresholds(min_identity=0.7, min_clip_score=20.0),
    best_epoch=3,
    provenance=[
        {"kind": "youtube", "url": "https://example.org/watch?v=1", "count": 30},
        {"kind": "upload", "url": None, "count": 12},
    ],
    licence="CC-BY-4.0",
    author="Studio A",
    source_url="https://example.org/aiko",
    notes="",
    created=date(2026, 11, 22),
)


def rows(text: str) -> dict[str, list[str]]:
    """Table rows by their first cell, split on the pipes that are not escaped."""
    table = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            table.setdefault(cells[0], cells[1:])
    return table


def headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def first_mention(lines: list[str], name: str) -> int:
    """The line where `name` first stands as a row label or a heading."""
    return next(
        i
        for i, line in enumerate(lines)
        if line.startswith(f"| {name} |") or line.lstrip("#").strip() == name
    )


def test_the_card_lists_every_field_in_a_stable_order() -> None:
    text = render_model_card(CARD)
    table, titles = rows(text), headings(text)
    for name in MODEL_CARD_FIELDS:
        assert name in table or name in titles, f"{name} missing from the card"
    # Fields appear in MODEL_CARD_FIELDS order (each at its first mention as a label or title).
    lines = text.splitlines()
    first = [first_mention(lines, name) for name in MODEL_CARD_FIELDS]
    assert first == sorted(first)
    assert render_model_card(CARD) == text


def test_the_card_shows_the_values() -> None:
    text = render_model_card(CARD)
    table = rows(text)
    assert text.startswith("# Aiko LoRA\n")
    assert table["Character"] == ["Aiko (`aiko`)"]
    assert table["Trigger word"] == ["`aikochan`"]
    assert table["Base checkpoint"] == ["sd15-anime.safetensors"]
    assert table["Release"] == ["7"] and table["Status"] == ["candidate"]
    assert table["LoRA file"] == ["aiko-r7.safetensors"] and table["SHA-256"] == [f"`{SHA}`"]
    assert table["Date"] == ["2026-11-22"]
    assert table["Dataset version"] == ["`d3adb33f`"] and table["Images"] == ["42"]
    shots = [line.split("|")[1].strip() for line in text.splitlines() if line.endswith(" |")]
    assert [s for s in shots if s in ("close", "mid", "far", "unknown")] == [
        "close",
        "mid",
        "far",
        "unknown",
    ]
    assert table["close"] == ["10"] and table["unknown"] == ["4"]
    assert table["network_dim"] == ["16"] and table["epochs"] == ["[1, 2, 3]"]
    assert "![Evaluation grid](<evals/aiko/7/grid.png>)" in text
    assert table["identity"] == ["0.8123", "≥ 0.7"]
    assert table["clip_score"] == ["not measured", "≥ 20"]
    assert table["quality"] == ["0.95", "≥ 0.5"]
    assert table["lora_effect"] == ["0.0123", "≥ 0.002"]
    assert "**fail**\n\n- clip_score not measured" in text
    assert "### Best epoch\n\n3\n" in text
    assert table["youtube"] == ["https://example.org/watch?v=1", "30"]
    assert table["upload"] == [NOT_RECORDED, "12"]
    assert table["Licence"] == ["CC-BY-4.0"] and table["Author"] == ["Studio A"]
    assert table["Source URL"] == ["https://example.org/aiko"]
    assert table["Notes"] == [NOT_RECORDED]


def test_unrecorded_fields_say_so() -> None:
    bare = replace(
        CARD,
        lora_sha256="",
        shot_distribution={},
        training_parameters={},
        scores={},
        verdict_reasons=[],
        best_epoch=None,
        provenance=[],
        licence="",
        author=" ",
        source_url="",
        grid_path="",
        thresholds=GateThresholds(),
    )
    text = render_model_card(bare)
    table = rows(text)
    for name in ("SHA-256", "Licence", "Author", "Source URL", "Notes"):
        assert table[name] == [NOT_RECORDED], name
    assert table["close"] == ["0"] and table["far"] == ["0"]
    assert table["identity"] == ["not measured", "not gated"]
    for section in ("Training parameters", "Provenance", "Evaluation grid", "Best epoch"):
        assert f"{section}\n\n{NOT_RECORDED}\n" in text, section


def test_table_cells_escape_pipes_and_newlines() -> None:
    card = replace(
        CARD,
        character_name="Aiko | Kenji\nduo",
        notes="line one\nline two | with a pipe",
        training_parameters={"caption|prefix": "a | b"},
        verdict_reasons=["identity 0.5 < 0.7\nand more"],
    )
    text = render_model_card(card)
    table = rows(text)
    assert text.startswith("# Aiko | Kenji duo LoRA\n")
    assert table["Character"] == ["Aiko \\| Kenji<br>duo (`aiko`)"]
    assert table["Notes"] == ["line one<br>line two \\| with a pipe"]
    assert table["caption\\|prefix"] == ["a \\| b"]
    assert "- identity 0.5 < 0.7 and more" in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert len(re.split(r"(?<!\\)\|", line)) in (4, 5), line


def test_an_overridden_unverified_gate_is_on_the_card() -> None:
    card = replace(
        CARD,
        verdict="unverified",
        verdict_reasons=["identity and clip_score not measured"],
        gate_override="mika on 2026-12-03 21:40 UTC (eval 4): checked the grid by eye",
    )
    text = render_model_card(card)
    assert "**unverified**\n\n- identity and clip_score not measured" in text
    assert "**Gate overridden** by mika on 2026-12-03 21:40 UTC (eval 4): checked the grid" in text
    assert "Gate overridden" not in render_model_card(CARD)
