"""The kohya layout split by shot type: folders, captions, shots.json and metadata.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.dataset.caption_strategies import caption_set_from_captions
from lora_pipeline.dataset.captions import CaptionError
from lora_pipeline.dataset.kohya_layout import (
    NOTE_NO_DETECTOR,
    NOTE_WITH_DETECTOR,
    ShotSplitError,
    SplitOptions,
    build_shot_splits,
    shot_caption,
    shot_warnings,
)
from lora_pipeline.dataset.versions import ManifestError, build_manifest, write_dataset_version
from lora_pipeline.media.store import DataRoot
from lora_pipeline.vision.faces import FaceBox
from lora_pipeline_tests.dataset.conftest import colour_of, store_images

# Images are 64 x 48 = 3072 px.
CLOSE_FACE = FaceBox(10, 4, 50, 44, 0.93)  # 1600 px, 52 %
MID_FACE = FaceBox(20, 10, 40, 30, 0.81)  # 400 px, 13 %
FAR_FACE = FaceBox(5, 5, 15, 15, 0.6)  # 100 px, 3.3 %


class PlantedDetector:
    """Test double of a face detector: boxes planted per image, recognised by colour."""

    name = "planted"

    def __init__(self, faces_by_id: dict[int, list[FaceBox]]) -> None:
        self.faces_by_colour = {colour_of(i): faces for i, faces in faces_by_id.items()}
        self.seen: list[tuple[str, tuple[int, int]]] = []

    def detect(self, image: Image.Image) -> list[FaceBox]:
        self.seen.append((image.mode, image.size))
        return list(self.faces_by_colour[image.getpixel((0, 0))])


def make_version(root: DataRoot, ids: Sequence[int]) -> tuple[Path, dict, dict[str, str]]:
    manifest = build_manifest("aya", "aya", store_images(root, ids))
    version_dir = write_dataset_version(root, manifest)
    captions = {e["file"]: f"aya, pose {e['image_id']}" for e in manifest["images"]}
    return version_dir, manifest, captions


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


SPLIT_FILES = [
    "concepts.json",
    "dataset.toml",
    "dataset_manifest.json",
    "kohya_config.json",
    "metadata.json",
    "metadata.jsonl",
    "preview_manifest.json",
    "shots.json",
    "train.sh",
    "training_config.json",
    "training_info.json",
]


def test_no_detector_puts_everything_in_unknown(data_root: DataRoot, tmp_path: Path) -> None:
    version_dir, manifest, captions = make_version(data_root, [1, 2])
    out = tmp_path / "kohya"
    split = build_shot_splits(version_dir, manifest, captions, out, None, "2025-01-02T03:04:05")
    assert split.directory == out
    assert sorted(files_under(out)) == sorted(
        [
            *SPLIT_FILES,
            "unknown/aya_unknown_0001.png",
            "unknown/aya_unknown_0001.txt",
            "unknown/aya_unknown_0002.png",
            "unknown/aya_unknown_0002.txt",
        ]
    )
    # Unknown shots get no shot tag: the caption is the caption given.
    assert (out / "unknown" / "aya_unknown_0002.txt").read_text() == "aya, pose 2"
    assert (out / "unknown" / "aya_unknown_0002.png").read_bytes() == (
        version_dir / "images" / "aya_0002.png"
    ).read_bytes()
    unknown = {"shot_type": "unknown", "face_ratio": None, "confidence": None, "face_bbox": None}
    assert json.loads((out / "shots.json").read_text()) == {
        "aya_unknown_0001.png": unknown,
        "aya_unknown_0002.png": unknown,
    }
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata == {
        "person": "aya",
        "trigger_word": "aya",
        "total_images": 2,
        "shot_distribution": {"close": 0, "mid": 0, "far": 0, "unknown": 2},
        "top_concepts": [],
        "created_at": "2025-01-02T03:04:05",
    }
    assert split.metadata == metadata
    assert split.distribution == {"close": 0, "mid": 0, "far": 0, "unknown": 2}
    assert split.warnings == []
    assert split.repeats == {"unknown": 1}
    enriched = json.loads((out / "dataset_manifest.json").read_text())
    assert enriched["shots"] == {
        "face_detector": None,
        "note": NOTE_NO_DETECTOR,
        "distribution": {"close": 0, "mid": 0, "far": 0, "unknown": 2},
        "warnings": [],
    }
    assert [(i["image_id"], i["source_file"], i["file"]) for i in enriched["images"]] == [
        (1, "aya_0001.png", "unknown/aya_unknown_0001.png"),
        (2, "aya_0002.png", "unknown/aya_unknown_0002.png"),
    ]


def test_detector_splits_by_shot_type(data_root: DataRoot, tmp_path: Path) -> None:
    faces = {
        1: [CLOSE_FACE],
        2: [MID_FACE, FAR_FACE],  # the largest face decides
        3: [FAR_FACE],
        4: [CLOSE_FACE],
        5: [MID_FACE],
        6: [],
        7: [MID_FACE],
        8: [CLOSE_FACE],
    }
    detector = PlantedDetector(faces)
    version_dir, manifest, captions = make_version(data_root, list(faces))
    out = tmp_path / "kohya"
    split = build_shot_splits(version_dir, manifest, captions, out, detector, "t0")
    assert detector.seen == [("RGB", (64, 48))] * 8
    names = sorted(files_under(out))
    assert [n for n in names if n.endswith(".png")] == [
        "close/aya_close_0001.png",
        "close/aya_close_0002.png",
        "close/aya_close_0003.png",
        "far/aya_far_0001.png",
        "mid/aya_mid_0001.png",
        "mid/aya_mid_0002.png",
        "mid/aya_mid_0003.png",
        "unknown/aya_unknown_0001.png",
    ]
    assert len([n for n in names if n.endswith(".txt")]) == 8
    # Numbering follows image ids within each shot type; the shot tag follows the trigger.
    assert (out / "close" / "aya_close_0002.txt").read_text() == "aya, headshot, pose 4"
    assert (out / "mid" / "aya_mid_0001.txt").read_text() == "aya, portrait, pose 2"
    assert (out / "far" / "aya_far_0001.txt").read_text() == "aya, full body, pose 3"
    assert (out / "unknown" / "aya_unknown_0001.txt").read_text() == "aya, pose 6"
    shots = json.loads((out / "shots.json").read_text())
    assert shots["aya_close_0001.png"] == {
        "shot_type": "close",
        "face_ratio": 0.5208,
        "confidence": 0.93,
        "face_bbox": [10, 4, 50, 44],
    }
    assert shots["aya_mid_0001.png"]["face_ratio"] == 0.1302
    assert shots["aya_far_0001.png"] == {
        "shot_type": "far",
        "face_ratio": 0.0326,
        "confidence": 0.6,
        "face_bbox": [5, 5, 15, 15],
    }
    assert split.shots == shots
    expected_warnings = [
        "only 1 far image(s): at least 3 per shot type are recommended",
        "1 image(s) had no detectable face (unknown)",
    ]
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["shot_distribution"] == {"close": 3, "mid": 3, "far": 1, "unknown": 1}
    assert split.warnings == expected_warnings
    enriched = json.loads((out / "dataset_manifest.json").read_text())
    assert enriched["shots"]["face_detector"] == "planted"
    assert enriched["shots"]["note"] == NOTE_WITH_DETECTOR
    assert enriched["shots"]["warnings"] == expected_warnings
    by_id = {image["image_id"]: image for image in enriched["images"]}
    assert by_id[2]["file"] == "mid/aya_mid_0001.png"
    assert by_id[2]["caption"] == "aya, portrait, pose 2"
    # 3 close, 3 mid, 1 far: close and mid twice, far three times is 40/40/20 %, the fewest
    # repeats inside the ranges; the unknown image gets the smallest repeat.
    assert split.repeats == {"close": 2, "mid": 2, "far": 3, "unknown": 2}


def test_rerun_is_identical_except_created_at(data_root: DataRoot, tmp_path: Path) -> None:
    detector = PlantedDetector({1: [CLOSE_FACE], 2: [MID_FACE], 3: []})
    version_dir, manifest, captions = make_version(data_root, [1, 2, 3])
    out = tmp_path / "kohya"
    build_shot_splits(version_dir, manifest, captions, out, detector, "first")
    first = files_under(out)
    (out / "close" / "stale.png").write_bytes(b"left over")
    build_shot_splits(version_dir, manifest, captions, out, detector, "second")
    second = files_under(out)
    assert set(first) == set(second)
    changed = {name for name in first if first[name] != second[name]}
    assert changed == {"metadata.json", "training_info.json"}
    for name in changed:
        one, two = json.loads(first[name]), json.loads(second[name])
        assert (one.pop("created_at"), two.pop("created_at")) == ("first", "second")
        assert one == two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "kohya"]


def test_existing_empty_out_dir_is_replaced(data_root: DataRoot) -> None:
    version_dir, manifest, captions = make_version(data_root, [1])
    out = data_root.dir("kohya", "aya", manifest["version_hash"])
    build_shot_splits(version_dir, manifest, captions, out, None, "t")
    assert (out / "unknown" / "aya_unknown_0001.png").is_file()


def test_tampered_image_fails_and_keeps_previous_split(data_root: DataRoot, tmp_path: Path) -> None:
    version_dir, manifest, captions = make_version(data_root, [1, 2])
    out = tmp_path / "kohya"
    build_shot_splits(version_dir, manifest, captions, out, None, "t")
    before = files_under(out)
    image = version_dir / "images" / "aya_0002.png"
    image.unlink()
    Image.new("RGB", (64, 48), (0, 0, 0)).save(image, format="PNG")
    with pytest.raises(ManifestError, match="image 2"):
        build_shot_splits(version_dir, manifest, captions, out, None, "t2")
    assert files_under(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "kohya"]


def test_bad_inputs(data_root: DataRoot, tmp_path: Path) -> None:
    version_dir, manifest, captions = make_version(data_root, [1, 2])
    missing = dict(captions)
    missing.pop("aya_0001.png")
    with pytest.raises(CaptionError, match="no caption"):
        build_shot_splits(version_dir, manifest, missing, tmp_path / "k", None, "t")
    with pytest.raises(ShotSplitError, match="created_at"):
        build_shot_splits(version_dir, manifest, captions, tmp_path / "k", None, "")
    with pytest.raises(ShotSplitError, match="replace the dataset version"):
        build_shot_splits(version_dir, manifest, captions, version_dir, None, "t")
    assert (version_dir / "manifest.json").is_file()

    class Broken:
        name = "broken"

        def detect(self, image: Image.Image) -> list:
            return [(1, 2, 3, 4)]

    with pytest.raises(ShotSplitError, match="not a FaceBox"):
        build_shot_splits(version_dir, manifest, captions, tmp_path / "k", Broken(), "t")
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("distribution", "expected"),
    [
        ({"close": 6, "mid": 2, "far": 2, "unknown": 0}, ["only 2 mid", "only 2 far"]),
        ({"close": 7, "mid": 3, "far": 0, "unknown": 0}, ["only 0 far", "close shots are 70%"]),
        ({"close": 3, "mid": 3, "far": 6, "unknown": 0}, []),
        ({"close": 3, "mid": 3, "far": 7, "unknown": 0}, ["far shots are 54%"]),
        ({"close": 3, "mid": 3, "far": 3, "unknown": 2}, ["2 image(s) had no detectable face"]),
    ],
)
def test_balance_warnings(distribution: dict[str, int], expected: list[str]) -> None:
    warnings = shot_warnings(distribution, has_detector=True)
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start)
    assert shot_warnings(distribution, has_detector=False) == []


def test_shot_caption_puts_the_shot_tag_second() -> None:
    assert shot_caption("aya, pose 1", "headshot") == "aya, headshot, pose 1"
    assert shot_caption("aya", "full body") == "aya, full body"
    # Already mentioned later: moved up, not repeated.
    assert (
        shot_caption("aya standing, red, Portrait,x", "portrait")
        == "aya standing, portrait, red, x"
    )
    assert shot_caption("aya, pose 1", None) == "aya, pose 1"


def test_split_options_are_checked(data_root: DataRoot, tmp_path: Path) -> None:
    version_dir, manifest, captions = make_version(data_root, [1])
    for options, message in [
        (SplitOptions(base_model_version="sd3"), "unknown base model version"),
        (SplitOptions(shot_tags={"close": "head, shot"}), "comma-free"),
        (SplitOptions(shot_tags={"unknown": "mystery"}), "close, mid or far"),
    ]:
        with pytest.raises(ShotSplitError, match=message):
            build_shot_splits(
                version_dir, manifest, captions, tmp_path / "k", None, "t", options=options
            )
    assert not (tmp_path / "k").exists()
    split = build_shot_splits(
        version_dir,
        manifest,
        captions,
        tmp_path / "k",
        PlantedDetector({1: [CLOSE_FACE]}),
        "t",
        options=SplitOptions(person=" Aya\nTanaka ", shot_tags={"close": "face  close-up"}),
    )
    assert (
        tmp_path / "k" / "close" / "aya_close_0001.txt"
    ).read_text() == "aya, face close-up, pose 1"
    assert split.metadata["person"] == "Aya Tanaka"
    assert split.training["resolution"] == 512


def test_caption_set_must_match_the_captions(data_root: DataRoot, tmp_path: Path) -> None:
    version_dir, manifest, captions = make_version(data_root, [1, 2])
    other = caption_set_from_captions("aya", {**captions, "aya_0001.png": "aya, other"})
    with pytest.raises(ShotSplitError, match="caption set does not hold"):
        build_shot_splits(
            version_dir, manifest, captions, tmp_path / "k", None, "t", caption_set=other
        )
