"""Issue 17 items 1–3: one crop per identified character, three-stage crops for the shot types
a dataset lacks, and identification that combines reference matching with the VLM. Frames are
drawn (vision/cast.py) and the detectors are tiny ONNX models whose boxes are known."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from lora_pipeline.media.frames import FrameFilters
from lora_pipeline.media.ingest import IngestOptions, ingest_source
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Image as ImageRow
from lora_pipeline.vision.classify import (
    ClassifyOptions,
    classify_character_sources,
    profile_of,
    registry_references,
)
from lora_pipeline.vision.faces import FaceBox
from lora_pipeline.vision.identifier_factory import build_identifier
from lora_pipeline.vision.ollama import OllamaIdentifier
from lora_pipeline.vision.persons import find_persons
from lora_pipeline_tests.media.conftest import demo_registry
from lora_pipeline_tests.vision.cast import (
    AIKO,
    KENJI,
    STRANGER,
    draw_frame,
    head_box,
    load_detectors,
    person_box,
)
from lora_pipeline_tests.vision.fake_ollama import FakeOllama, fake_ollama

NO_FILTERS = FrameFilters(static_threshold=None, near_duplicate_distance=None)


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[tuple[Registry, DataRoot]]:
    registry = demo_registry(tmp_path)
    yield registry, DataRoot(tmp_path / "data")
    registry.dispose()


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with fake_ollama() as server:
        yield server


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory):
    return load_detectors(tmp_path_factory.mktemp("detectors"))


def ingest_frame(registry: Registry, root: DataRoot, frame, name: str) -> int:
    """A project-mode image upload of one drawn frame; its source id."""
    path = root.root.parent / f"{name}.png"
    frame.save(path)
    upload = store_upload(path, root)
    with registry.session() as session:
        source = commands.create_source(
            session, "demo", upload.kind, upload.relpath, mode="project"
        )
    outcome = ingest_source(
        registry, root, source.id, lambda _: None, IngestOptions(filters=NO_FILTERS)
    )
    assert outcome.state == "done", outcome.error
    return source.id


def images_of(registry: Registry, slug: str) -> list[ImageRow]:
    with registry.session() as session:
        character = commands.get_character(session, slug)
        query = select(ImageRow).where(ImageRow.character_id == character.id)
        return list(session.scalars(query.order_by(ImageRow.id)))


def frame_sha(registry: Registry, source_id: int) -> str:
    with registry.session() as session:
        (frame,) = queries.frames_of_source(session, source_id)
        return frame.sha256


def test_the_person_detector_finds_the_drawn_boxes_and_flags_touching_persons(detectors):
    persons, heads = detectors
    apart = find_persons(draw_frame([(0, AIKO), (2, KENJI)]), persons, 0.15, heads)
    assert [(p.person.x1, p.person.y1, p.person.x2, p.person.y2) for p in apart] == [
        person_box(0),
        person_box(2),
    ]
    assert [(h.x1, h.y1, h.x2, h.y2) for h in (p.head for p in apart) if h] == [
        head_box(0),
        head_box(2),
    ]
    # 15 % of 128 px on each side, clipped to the frame.
    assert [p.box for p in apart] == [(0, 0, 147, 256), (237, 0, 403, 256)]
    assert [p.not_solo for p in apart] == [False, False]
    touching = find_persons(draw_frame([(1, AIKO), (2, KENJI)]), persons, 0.15, heads)
    assert [p.not_solo for p in touching] == [True, True]
    assert find_persons(draw_frame([]), persons, 0.15, heads) == []


def test_a_two_character_frame_becomes_one_crop_per_character(studio, ollama, detectors):
    registry, root = studio
    persons, _ = detectors
    source_id = ingest_frame(registry, root, draw_frame([(0, AIKO), (2, KENJI)]), "both")
    stranger_id = ingest_frame(registry, root, draw_frame([(1, STRANGER)], seed=1), "stranger")
    options = ClassifyOptions(near_duplicate_distance=None, persons=persons)
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None, options)

    assert stats.persons_detected == 3 and ollama.images_seen == 3
    assert stats.per_character == {"aiko": 1, "kenji": 1} and stats.crops_added == 2
    (stranger,) = stats.unrecognised
    assert stranger.box == (109, 0, 275, 256)
    whole = frame_sha(registry, source_id)
    for slug, column, box in (("aiko", 0, [0, 0, 147, 256]), ("kenji", 2, [237, 0, 403, 256])):
        (crop,) = images_of(registry, slug)
        assert crop.sha256 != whole and crop.status == "pending"
        assert (crop.width, crop.height) == (box[2] - box[0], 256)
        assert crop.provenance["source_id"] == source_id and crop.provenance["frame_index"] == 0
        assert crop.provenance["crop"]["box"] == box
        assert crop.provenance["crop"]["detected_box"] == list(person_box(column))
        assert crop.provenance["crop"]["not_solo"] is False
        assert crop.provenance["identification"]["identifier"] == "ollama:llava:13b"
        assert "derived" not in crop.provenance and crop.status_reason is None
    with registry.session() as session:
        (frame,) = queries.frames_of_source(session, source_id)
        assert frame.identified == ["aiko", "kenji"] and "2 person(s)" in frame.raw_answer
        (alone,) = queries.frames_of_source(session, stranger_id)
        assert alone.identified == [] and "no one" in alone.raw_answer


def test_touching_characters_give_crops_flagged_not_solo(studio, ollama, detectors):
    registry, root = studio
    persons, _ = detectors
    ingest_frame(registry, root, draw_frame([(1, AIKO), (2, KENJI)]), "close")
    options = ClassifyOptions(near_duplicate_distance=None, persons=persons)
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None, options)
    assert stats.crops_not_solo == 2
    for slug in ("aiko", "kenji"):
        (crop,) = images_of(registry, slug)
        assert crop.provenance["crop"]["not_solo"] is True
        assert crop.status_reason.startswith("not solo")


def test_without_a_detector_a_whole_multi_character_frame_goes_into_no_dataset(studio, ollama):
    registry, root = studio
    ingest_frame(registry, root, draw_frame([(0, AIKO), (2, KENJI)]), "both")
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None)
    assert stats.multi_character_frames == 1 and stats.images_added == 0
    assert images_of(registry, "aiko") == images_of(registry, "kenji") == []


def test_three_stage_crops_only_for_the_shot_types_the_dataset_lacks(studio, ollama, detectors):
    registry, root = studio
    persons, heads = detectors
    # Aiko already has three close-ups: only her upper body is missing; Kenji lacks both.
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        for index in range(3):
            stored = root.put_image(
                draw_frame([(0, AIKO)], seed=100 + index).crop((54, 0, 138, 37))
            )
            commands.add_image(
                session, aiko.id, stored.sha256, stored.relpath, stored.width, stored.height,
                "upload", provenance={"shot": "close"},
            )  # fmt: skip
    ingest_frame(registry, root, draw_frame([(0, AIKO), (2, KENJI)]), "both")
    options = ClassifyOptions(near_duplicate_distance=None, persons=persons, heads=heads)
    identifier = OllamaIdentifier(ollama.url, "llava:13b")
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None, options)

    assert stats.crops_added == 2 and stats.crops_derived == 3
    new_aiko = [i for i in images_of(registry, "aiko") if "crop" in i.provenance]
    assert [
        (i.provenance["shot"], i.provenance.get("derived", {}).get("stage")) for i in new_aiko
    ] == [
        ("far", None),
        ("mid", "mid"),
    ]
    kenji = images_of(registry, "kenji")
    assert [i.provenance["shot"] for i in kenji] == ["far", "mid", "close"]
    head = kenji[2]
    assert head.provenance["derived"] == {"from_box": [237, 0, 403, 256], "stage": "close"}
    assert head.provenance["crop"]["box"] == [310, 0, 394, 37] and head.status == "pending"
    assert len({i.sha256 for i in kenji}) == 3


def test_combined_identification_matches_first_and_asks_the_vlm_when_unsure(
    studio, ollama, tmp_path
):
    from lora_pipeline.vision.tiny_onnx import build_tiny_ccip

    registry, root = studio
    feat, metrics = build_tiny_ccip(tmp_path / "ccip")
    # One approved picture of Aiko; Kenji has none, so only the VLM can name him.
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        stored = root.put_image(draw_frame([(0, AIKO)], seed=7).crop((0, 0, 147, 256)))
        image, _ = commands.add_image(
            session, aiko.id, stored.sha256, stored.relpath, stored.width, stored.height, "upload"
        )
        commands.approve_image(session, image.id)
    identifier = build_identifier(
        f"ccip:{feat}#{metrics}+ollama:{ollama.url}#llava:13b",
        references=registry_references(registry, root),
        reference_threshold=0.95,
    )
    assert identifier.name == "ccip:feat.onnx+ollama:llava:13b"
    with registry.session() as session:
        profiles = [profile_of(commands.get_character(session, s)) for s in ("aiko", "kenji")]
    red = draw_frame([(0, AIKO)], seed=8).crop((0, 0, 147, 256))
    blue = draw_frame([(0, KENJI)], seed=9).crop((0, 0, 147, 256))
    matched, asked = identifier.identify([red, blue], profiles)
    assert matched.slugs == {"aiko"} and ollama.images_seen == 1
    assert matched.raw_answer.startswith("matched by reference: ccip:feat.onnx (threshold 0.95)")
    assert asked.slugs == {"kenji"} and asked.raw_answer.startswith("reference unsure, asked")
    assert "aiko 0." in asked.raw_answer  # the match score is recorded beside the VLM's answer


def test_face_box_interface_is_what_the_person_detector_returns(detectors):
    persons, _ = detectors
    assert all(isinstance(box, FaceBox) for box in persons.detect(draw_frame([(0, AIKO)])))
    assert persons.name == "onnx:persons.onnx"
