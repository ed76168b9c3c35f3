"""Issue 17 item 4: unrecognised crops clustered into candidate characters (purity and count
measured), labelling a cluster makes pending images, re-clustering keeps labelled ones, and the
`clusters` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from lora_pipeline.cli import main
from lora_pipeline.registry import commands
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.models import UnrecognisedCrop
from lora_pipeline.vision.ccip import load_ccip
from lora_pipeline.vision.classify import ClassifyOptions, classify_character_sources
from lora_pipeline.vision.clustering import cluster_project
from lora_pipeline.vision.ollama import OllamaIdentifier
from lora_pipeline.vision.tiny_onnx import build_tiny_ccip
from lora_pipeline_tests.vision.cast import draw_frame
from lora_pipeline_tests.vision.test_persons import (  # noqa: F401 - fixtures
    detectors,
    images_of,
    ingest_frame,
    ollama,
    studio,
)

# Colours the fake VLM knows as no one (red and blue differ by under 60).
STRANGERS = {"green": (30, 220, 30), "magenta": (200, 30, 200), "white": (235, 235, 235)}


def _ingest_strangers(registry, root, server, persons, frames: int, first_seed: int) -> None:
    names = list(STRANGERS)
    for index in range(frames):
        left, right = names[index % 3], names[(index + 1) % 3]
        frame = draw_frame(
            [(0, STRANGERS[left]), (2, STRANGERS[right])], seed=first_seed + index, jitter=20
        )
        ingest_frame(registry, root, frame, f"strangers-{first_seed + index}")
    options = ClassifyOptions(near_duplicate_distance=None, persons=persons)
    identifier = OllamaIdentifier(server.url, "llava:13b")
    classify_character_sources(registry, root, "aiko", identifier, lambda _: None, options)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory):
    feat, metrics = build_tiny_ccip(tmp_path_factory.mktemp("ccip"))
    return load_ccip(f"ccip:{feat}#{metrics}")


def _truth(registry) -> dict[int, str]:
    """crop id → the stranger drawn there (frame seed order and column give it)."""
    names = list(STRANGERS)
    with registry.session() as session:
        crops = list(session.scalars(select(UnrecognisedCrop)))
        truth = {}
        for crop in crops:
            source = crop.provenance["source_id"]
            column_left = crop.provenance["crop"]["detected_box"][0] == 0
            index = source - 1
            truth[crop.id] = names[index % 3] if column_left else names[(index + 1) % 3]
        return truth


def test_unrecognised_crops_cluster_into_the_drawn_strangers(
    studio, ollama, detectors, embedder  # noqa: F811 - the fixtures imported above
) -> None:
    registry, root = studio
    persons, _ = detectors
    _ingest_strangers(registry, root, ollama, persons, frames=9, first_seed=0)
    stats = cluster_project(registry, root, "demo", embedder, lambda _: None)
    assert stats.crops == 18 and stats.embedded == 18
    truth = _truth(registry)
    with registry.session() as session:
        found = cluster_commands.project_clusters(session, "demo")
        members = [[c.id for c in cluster_commands.cluster_crops(session, f.id)] for f in found]
        sheets = [f.contact_sheet for f in found]
    clustered = sum(len(m) for m in members)
    purity = sum(max([truth[i] for i in m].count(n) for n in STRANGERS) for m in members)
    assert len(found) == stats.clusters == stats.new_candidates == 3
    assert purity / clustered == 1.0 and clustered >= 16  # at most two crops left as noise
    assert all(root.path(sheet).is_file() for sheet in sheets)

    # Label the largest as a new character: its crops become pending images of her.
    green = next(f for f, m in zip(found, members, strict=True) if truth[m[0]] == "green")
    with registry.session() as session:
        commands.add_character(session, "demo", "midori", "Midori", design_prompt="green coat")
        added = cluster_commands.label_cluster(session, green.id, "midori")
    assert len(added) == green.size and all(i.status == "pending" for i in added)
    assert {i.provenance["cluster_id"] for i in images_of(registry, "midori")} == {green.id}

    # New frames: green crops join the labelled cluster (and her images); it keeps its id.
    _ingest_strangers(registry, root, ollama, persons, frames=3, first_seed=100)
    again = cluster_project(registry, root, "demo", embedder, lambda _: None)
    assert again.joined == 2 and again.images_added == 2 and again.new_candidates == 0
    with registry.session() as session:
        kept = cluster_commands.get_cluster(session, green.id)
        assert kept.status == "labelled" and kept.size == green.size + 2
        assert len(cluster_commands.project_clusters(session, "demo")) == 2
    assert len(images_of(registry, "midori")) == green.size + 2


def test_the_clusters_cli_lists_labels_and_dismisses(
    studio, ollama, detectors, embedder, capsys, monkeypatch, tmp_path: Path  # noqa: F811
) -> None:
    registry, root = studio
    persons, _ = detectors
    _ingest_strangers(registry, root, ollama, persons, frames=9, first_seed=0)
    cluster_project(registry, root, "demo", embedder, lambda _: None)
    monkeypatch.setenv("LORA_PIPELINE_DATABASE_URL", registry.url)
    monkeypatch.setenv("LORA_PIPELINE_DATA_ROOT", str(root.root))
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    with registry.session() as session:
        first, second, *_ = cluster_commands.project_clusters(session, "demo")
        first_id, second_id = first.id, second.id
    assert main(["clusters", "list", "--project", "demo"]) == 0
    listing = capsys.readouterr().out
    assert f"{first_id:>5}  demo" in listing and "open" in listing
    assert main(["clusters", "show", str(first_id)]) == 0
    assert "contact sheet" in capsys.readouterr().out
    assert main(["clusters", "label", str(first_id), "--new", "hana", "--name", "Hana"]) == 0
    assert "pending image(s) to review" in capsys.readouterr().out
    assert len(images_of(registry, "hana")) == first.size
    assert main(["clusters", "dismiss", str(second_id)]) == 0
    assert main(["clusters", "label", str(second_id), "--character", "aiko"]) != 0
    assert "already dismissed" in capsys.readouterr().err
