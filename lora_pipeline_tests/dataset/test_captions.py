"""Captions: the design strategy and the caption files of a version."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.dataset.captions import (
    CaptionError,
    caption_dataset_design,
    design_caption,
    load_captions,
    write_captions,
)
from lora_pipeline.dataset.versions import build_manifest, write_dataset_version
from lora_pipeline.media.store import DataRoot
from lora_pipeline_tests.dataset.conftest import store_images


@pytest.mark.parametrize(
    ("trigger", "prompt", "expected"),
    [
        ("aya", "red dress, long hair", "aya, red dress, long hair"),
        ("aya", "  red   dress ,,\n long hair , ", "aya, red dress, long hair"),
        ("aya", "red dress, AYA, long hair", "aya, red dress, long hair"),
        ("aya", "aya, red dress", "aya, red dress"),
        ("aya", "aya standing outdoors, red dress", "aya standing outdoors, red dress"),
        ("aya", "ayame, red dress", "aya, ayame, red dress"),
        ("aya", "red dress, red dress", "aya, red dress"),
        (" <char_aya> ", "portrait", "<char_aya>, portrait"),
        ("aya", "", "aya"),
        ("aya", " , ,", "aya"),
    ],
)
def test_design_caption(trigger: str, prompt: str, expected: str) -> None:
    assert design_caption(trigger, prompt) == expected


@pytest.mark.parametrize("trigger", ["", "   ", "aya, chan"])
def test_design_caption_rejects_bad_trigger(trigger: str) -> None:
    with pytest.raises(CaptionError, match="trigger"):
        design_caption(trigger, "red dress")


@pytest.fixture
def version(data_root: DataRoot) -> tuple[Path, dict]:
    manifest = build_manifest("aya", "aya", store_images(data_root, [1, 2, 3]))
    return write_dataset_version(data_root, manifest), manifest


def test_caption_dataset_design_writes_one_file_per_image(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    written = caption_dataset_design(version_dir, manifest, "red dress,\nlong hair")
    expected = dict.fromkeys(
        ["aya_0001.png", "aya_0002.png", "aya_0003.png"], "aya, red dress, long hair"
    )
    assert written == expected
    files = sorted(p.name for p in (version_dir / "captions").iterdir())
    assert files == ["aya_0001.txt", "aya_0002.txt", "aya_0003.txt"]
    assert (version_dir / "captions" / "aya_0002.txt").read_text() == "aya, red dress, long hair"
    assert load_captions(version_dir, manifest) == expected


def test_write_captions_normalises_and_overwrites(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    first = {e["file"]: f"aya, pose {e['image_id']}" for e in manifest["images"]}
    write_captions(version_dir, manifest, first)
    second = {e["file"]: f"aya,\n  smiling\tpose {e['image_id']}" for e in manifest["images"]}
    written = write_captions(version_dir, manifest, second)
    assert written["aya_0003.png"] == "aya, smiling pose 3"
    assert (version_dir / "captions" / "aya_0003.txt").read_text() == "aya, smiling pose 3"
    # No temporary files survive the atomic writes.
    assert len(list((version_dir / "captions").iterdir())) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("aya_0002.png"), "no caption"),
        (lambda c: c.update({"other.png": "aya"}), "not in the manifest"),
        (lambda c: c.update({"aya_0001.png": "red dress"}), "start with the trigger"),
        (lambda c: c.update({"aya_0001.png": "ayame, red dress"}), "start with the trigger"),
        (lambda c: c.update({"aya_0001.png": "   "}), "start with the trigger"),
    ],
)
def test_write_captions_refuses_bad_sets(version: tuple[Path, dict], change, message: str) -> None:
    version_dir, manifest = version
    captions = {e["file"]: "aya, red dress" for e in manifest["images"]}
    change(captions)
    with pytest.raises(CaptionError, match=message):
        write_captions(version_dir, manifest, captions)
    assert not (version_dir / "captions").exists()


def test_write_captions_needs_a_published_version(data_root: DataRoot, tmp_path: Path) -> None:
    manifest = build_manifest("aya", "aya", store_images(data_root, [1]))
    with pytest.raises(CaptionError, match="not a complete dataset version"):
        write_captions(tmp_path / "empty", manifest, {"aya_0001.png": "aya"})


def test_load_captions_reports_missing_file(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    caption_dataset_design(version_dir, manifest, "red dress")
    (version_dir / "captions" / "aya_0001.txt").unlink()
    with pytest.raises(CaptionError, match="aya_0001.txt is missing"):
        load_captions(version_dir, manifest)
