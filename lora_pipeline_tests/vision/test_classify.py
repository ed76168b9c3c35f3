"""Ingest then classify: frames sorted into characters, once, without repeats."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from lora_pipeline.media.ingest import IngestOptions, ingest_source
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.media.video import ffmpeg_exe
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Frame
from lora_pipeline.registry.models import Image as ImageRow
from lora_pipeline.vision.classify import (
    ClassifyOptions,
    IdentifierUnavailable,
    classify_character_sources,
    registry_references,
)
from lora_pipeline.vision.ollama import OllamaIdentifier
from lora_pipeline_tests.media.conftest import demo_registry
from lora_pipeline_tests.media.test_comfyui_outputs import _graph, write_output
from lora_pipeline_tests.vision.fake_ollama import (
    BLUE,
    GREY,
    RED,
    FakeOllama,
    fake_ollama,
    two_tone,
)

# One second each: Aiko, Kenji, both, no one.
SCENES = [(RED, RED), (BLUE, BLUE), (RED, BLUE), (GREY, GREY)]


def make_video(path: Path, scenes: list[tuple[tuple[int, int, int], ...]]) -> Path:
    """An mp4 showing each two-tone picture for one second."""
    folder = path.parent / f"{path.stem}-frames"
    folder.mkdir(parents=True)
    for index, (left, right) in enumerate(scenes):
        two_tone(left, right).save(folder / f"{index:03d}.png")
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-framerate", "1", "-i", str(folder / "%03d.png")]
        + ["-vf", "fps=24,format=yuv420p", "-c:v", "mpeg4", "-q:v", "2", str(path)],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def scenes_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "scenes.mp4", SCENES)


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[tuple[Registry, DataRoot]]:
    registry = demo_registry(tmp_path)
    yield registry, DataRoot(tmp_path / "data")
    registry.dispose()


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with fake_ollama() as server:
        yield server


def _ingest(
    registry: Registry, root: DataRoot, video: Path, character: str | None = None, **options
) -> int:
    upload = store_upload(video, root)
    with registry.session() as session:
        source = commands.create_source(
            session,
            "demo",
            upload.kind,
            upload.relpath,
            character_slug=character,
            mode="single" if character else "project",
            fps=1.0,
            max_frames=10,
        )
    outcome = ingest_source(registry, root, source.id, lambda _: None, IngestOptions(**options))
    assert outcome.state == "done", outcome.error
    return source.id


def _images(registry: Registry, slug: str, status: str = "pending") -> list[ImageRow]:
    with registry.session() as session:
        character = commands.get_character(session, slug)
        query = select(ImageRow).where(
            ImageRow.character_id == character.id, ImageRow.status == status
        )
        return list(session.scalars(query.order_by(ImageRow.id)))


def test_project_mode_sorts_frames_into_characters(studio, ollama, scenes_video) -> None:
    registry, root = studio
    source_id = _ingest(registry, root, scenes_video)
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    # Whole frames asked for: the frame showing both goes to both (without it, to neither:
    # test_persons.py).
    whole = ClassifyOptions(whole_frames=True)
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None, whole)
    assert stats.frames_classified == 4 and ollama.images_seen == 4
    assert stats.per_character == {"aiko": 2, "kenji": 2}
    assert (stats.images_added, stats.skipped, stats.near_duplicates) == (4, 1, 0)
    aiko, kenji = _images(registry, "aiko"), _images(registry, "kenji")
    assert [i.provenance["frame_index"] for i in aiko] == [0, 2]
    assert [i.provenance["frame_index"] for i in kenji] == [1, 2]
    both = aiko[1]
    assert both.sha256 == kenji[1].sha256 and both.origin == "frame"
    assert both.provenance["source_id"] == source_id
    assert both.provenance["timestamp_s"] == 2.0 and both.phash
    with registry.session() as session:
        frames = queries.frames_of_source(session, source_id)
    assert [f.identified for f in frames] == [["aiko"], ["kenji"], ["aiko", "kenji"], []]
    assert frames[3].identifier == "ollama:llava:13b" and "can't see" in frames[3].raw_answer

    # Classifying again (the run of the other character) asks the model nothing.
    again = classify_character_sources(registry, root, "kenji", identifier, lambda _: None)
    assert (again.frames_classified, again.frames_cached, again.images_added) == (0, 4, 0)
    assert ollama.images_seen == 4


def test_ingesting_the_same_video_again_adds_nothing(studio, ollama, scenes_video) -> None:
    registry, root = studio
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    _ingest(registry, root, scenes_video)
    classify_character_sources(registry, root, "aiko", identifier, lambda _: None)
    before = {s: len(_images(registry, s)) for s in ("aiko", "kenji")}
    _ingest(registry, root, scenes_video)  # a second request for the same video
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None)
    # The same pictures were classified by the same model: answers reused, no model call.
    assert stats.frames_reused == 4 and ollama.images_seen == 4
    # The frame showing both characters goes into neither dataset (no whole frames).
    assert stats.images_added == 0 and stats.near_duplicates == 2
    assert stats.multi_character_frames == 1
    assert {s: len(_images(registry, s)) for s in ("aiko", "kenji")} == before


def test_single_mode_with_a_model_keeps_the_characters_frames(studio, ollama, scenes_video) -> None:
    registry, root = studio
    _ingest(registry, root, scenes_video, character="kenji")
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    stats = classify_character_sources(registry, root, "kenji", identifier, lambda _: None)
    assert stats.per_character == {"kenji": 2} and stats.skipped == 2
    assert _images(registry, "aiko") == []
    skipped = _images(registry, "kenji", status="skipped")
    assert [i.provenance["frame_index"] for i in skipped] == [0, 3]
    assert skipped[0].status_reason.startswith('not recognised by ollama:llava:13b: ["Aiko"]')


def test_single_mode_without_a_model_takes_the_sources_word(studio, scenes_video) -> None:
    registry, root = studio
    _ingest(registry, root, scenes_video, character="aiko")
    stats = classify_character_sources(registry, root, "aiko", None, lambda _: None)
    assert stats.per_character == {"aiko": 4}
    with registry.session() as session:
        identifiers = set(session.scalars(select(Frame.identifier)))
    assert identifiers == {"source_character"}


def test_single_mode_drops_near_duplicates_of_the_dataset_at_ingest(studio, scenes_video) -> None:
    registry, root = studio
    _ingest(registry, root, scenes_video, character="aiko")
    classify_character_sources(registry, root, "aiko", None, lambda _: None)
    upload = store_upload(scenes_video, root)
    with registry.session() as session:
        source = commands.create_source(
            session, "demo", upload.kind, upload.relpath, character_slug="aiko", fps=1.0
        )
    outcome = ingest_source(registry, root, source.id, lambda _: None)
    assert (outcome.stats.kept, outcome.stats.near_duplicates) == (0, 4)


def test_project_mode_without_a_model_waits(studio, scenes_video) -> None:
    registry, root = studio
    waiting = _ingest(registry, root, scenes_video)
    _ingest(registry, root, make_video(root.root.parent / "red.mp4", [(RED, RED)]), "aiko")
    with pytest.raises(IdentifierUnavailable, match=f"sources {waiting} need a vision identifier"):
        classify_character_sources(registry, root, "aiko", None, lambda _: None)
    assert len(_images(registry, "aiko")) == 1  # the single-mode source was classified
    with registry.session() as session:
        assert all(f.identified is None for f in queries.frames_of_source(session, waiting))


def test_comfyui_image_keeps_origin_and_settings(studio, tmp_path: Path) -> None:
    registry, root = studio
    folder = tmp_path / "output"
    write_output(folder, "aiko_00001_.png", _graph())
    with registry.session() as session:
        source = commands.create_source(
            session, "demo", "comfyui_output", "aiko_00001_.png", character_slug="aiko"
        )
    ingest_source(
        registry, root, source.id, lambda _: None, IngestOptions(comfyui_output_dir=folder)
    )
    classify_character_sources(registry, root, "aiko", None, lambda _: None)
    (image,) = _images(registry, "aiko")
    assert image.origin == "comfyui"
    assert image.generation_params["seed"] == 43 and image.generation_params["steps"] == 2
    assert image.provenance["source_uri"] == "aiko_00001_.png"


def test_registry_references_are_the_approved_images(studio) -> None:
    registry, root = studio
    stored = root.put_image(Image.new("RGB", (64, 64), RED))
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        image, _ = commands.add_image(
            session, aiko.id, stored.sha256, stored.relpath, 64, 64, "upload"
        )
    references = registry_references(registry, root)
    assert references("aiko") == []
    with registry.session() as session:
        commands.approve_image(session, image.id)
    (reference,) = references("aiko")
    assert reference.sha256 == stored.sha256 and reference.path == root.path(stored.relpath)
