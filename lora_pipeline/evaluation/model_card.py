"""The model card of a LoRA release (`model-card.md` beside the LoRA file), as markdown.

Everything a user of the LoRA needs in one file: how to trigger it, what it was trained on and
how, how it scored against the gate, where its images came from and under which licence. Every
field is always written, in a fixed order; a field nobody recorded says "not recorded", so a
missing licence is visible rather than silently absent. Writing the file is the caller's job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from lora_pipeline.evaluation.scores import GATED_SCORES, GateThresholds

NOT_RECORDED = "not recorded"
NOT_MEASURED = "not measured"
SHOT_KINDS = ("close", "mid", "far", "unknown")

# The row labels and headings of the card, in the order they appear.
SUMMARY_FIELDS = (
    "Character",
    "Trigger word",
    "Base checkpoint",
    "Release",
    "Status",
    "Continued from",
    "LoRA file",
    "SHA-256",
    "Date",
)
DATASET_FIELDS = ("Dataset version", "Images", "Shot distribution")
EVALUATION_FIELDS = ("Evaluation grid", "Scores", "Verdict", "Best epoch")
# The licence section's heading is its first row's label too.
LICENCE_FIELDS = ("Licence", "Author", "Source URL", "Notes")
MODEL_CARD_FIELDS: tuple[str, ...] = (
    *SUMMARY_FIELDS,
    "Dataset",
    *DATASET_FIELDS,
    "Training parameters",
    "Evaluation",
    *EVALUATION_FIELDS,
    "Provenance",
    *LICENCE_FIELDS,
)


@dataclass(frozen=True)
class ModelCard:
    character_name: str
    character_slug: str
    trigger_word: str
    base_checkpoint: str
    release_id: int
    release_status: str
    lora_file: str
    lora_sha256: str
    dataset_version: str
    image_count: int
    # close / mid / far / unknown -> images; other shot kinds are listed after these.
    shot_distribution: Mapping[str, int]
    training_parameters: Mapping[str, Any]
    # The grid image, relative to where the card is written.
    grid_path: str
    scores: Mapping[str, float | None]
    verdict: str
    thresholds: GateThresholds
    created: date | datetime | str
    verdict_reasons: Sequence[str] = ()
    best_epoch: int | None = None
    # The release whose weights this training started from (it failed the gate).
    parent_release_id: int | None = None
    # Where the images came from: {"kind": ..., "url": ..., "count": ...} each.
    provenance: Sequence[Mapping[str, Any]] = ()
    licence: str = ""
    author: str = ""
    source_url: str = ""
    notes: str = ""
    # An unverified gate overridden by a reviewer: "<reviewer> on <date> (eval N): <reason>".
    gate_override: str = ""


def render_model_card(card: ModelCard) -> str:
    """The card as markdown: a summary table, then dataset, training, evaluation, provenance
    and licence sections, always in this order."""
    sections = [
        [f"# {_one_line(card.character_name)} LoRA", "", *_summary(card)],
        _dataset(card),
        _training(card),
        _evaluation(card),
        _provenance(card),
        _licence(card),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _summary(card: ModelCard) -> list[str]:
    values = (
        f"{card.character_name} ({_code(card.character_slug)})",
        _code(card.trigger_word),
        card.base_checkpoint,
        str(card.release_id),
        card.release_status,
        f"release {card.parent_release_id}" if card.parent_release_id else "a fresh LoRA",
        card.lora_file,
        _code(card.lora_sha256),
        _date(card.created),
    )
    return _table(("Field", "Value"), list(zip(SUMMARY_FIELDS, values, strict=True)))


def _dataset(card: ModelCard) -> list[str]:
    shots = {kind: card.shot_distribution.get(kind, 0) for kind in SHOT_KINDS}
    shots |= {k: v for k, v in sorted(card.shot_distribution.items()) if k not in shots}
    return [
        "## Dataset",
        "",
        *_table(
            ("Field", "Value"),
            [("Dataset version", _code(card.dataset_version)), ("Images", card.image_count)],
        ),
        "",
        "### Shot distribution",
        "",
        *_table(("Shot", "Images"), list(shots.items())),
    ]


def _training(card: ModelCard) -> list[str]:
    rows = [(name, _value(value)) for name, value in sorted(card.training_parameters.items())]
    body = _table(("Parameter", "Value"), rows) if rows else [NOT_RECORDED]
    return ["## Training parameters", "", *body]


def _evaluation(card: ModelCard) -> list[str]:
    thresholds = card.thresholds.as_dict()
    names = [*GATED_SCORES, *sorted(set(card.scores) - set(GATED_SCORES))]
    rows = []
    for name in names:
        threshold_name = GATED_SCORES.get(name)
        threshold = thresholds.get(threshold_name) if threshold_name else None
        gate = "not gated" if threshold is None else f"≥ {threshold:g}"
        rows.append((name, _score(card.scores.get(name)), gate))
    reasons = [f"- {_one_line(reason)}" for reason in card.verdict_reasons]
    best = NOT_RECORDED if card.best_epoch is None else str(card.best_epoch)
    return [
        "## Evaluation",
        "",
        "### Evaluation grid",
        "",
        f"![Evaluation grid](<{card.grid_path}>)" if card.grid_path else NOT_RECORDED,
        "",
        "### Scores",
        "",
        *_table(("Score", "Value", "Threshold"), rows),
        "",
        "### Verdict",
        "",
        f"**{_one_line(card.verdict) or NOT_RECORDED}**",
        *([""] + reasons if reasons else []),
        *_override(card),
        "",
        "### Best epoch",
        "",
        best,
    ]


def _override(card: ModelCard) -> list[str]:
    if not card.gate_override:
        return []
    return ["", f"**Gate overridden** by {_one_line(card.gate_override)}"]


def _provenance(card: ModelCard) -> list[str]:
    rows = [
        (source.get("kind"), source.get("url"), source.get("count")) for source in card.provenance
    ]
    body = _table(("Kind", "URL", "Images"), rows) if rows else [NOT_RECORDED]
    return ["## Provenance", "", *body]


def _licence(card: ModelCard) -> list[str]:
    values = (card.licence, card.author, card.source_url, card.notes)
    rows = list(zip(LICENCE_FIELDS, values, strict=True))
    return ["## Licence", "", *_table(("Field", "Value"), rows)]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = [_row(header), "| " + " | ".join("---" for _ in header) + " |"]
    return lines + [_row(row) for row in rows]


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _cell(value: Any) -> str:
    """One table cell: never empty, one line, and a `|` that does not end the cell."""
    text = NOT_RECORDED if value is None or str(value).strip() == "" else str(value)
    return _inline(text).replace("|", "\\|")


def _inline(text: str) -> str:
    # A line break would end the table row: a cell keeps it as an HTML break.
    return "<br>".join(str(text).splitlines())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _code(text: str) -> str:
    # Inline code shows names and hashes verbatim; an empty one would render as two backticks.
    return f"`{text}`" if text and "`" not in text and "\n" not in text else text


def _value(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _score(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED
    return f"{value:.4g}"


def _date(value: date | datetime | str) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def gate_override_line(release: Any) -> str:
    """Who overrode an unverified gate, when, on which eval and why; "" when no one did."""
    if not release.gate_override_reason:
        return ""
    when = f"{release.gate_override_at:%Y-%m-%d %H:%M} UTC" if release.gate_override_at else ""
    return (
        f"{release.gate_override_by} on {when} (eval {release.gate_override_eval_id}): "
        f"{release.gate_override_reason}"
    )
