"""Dataset versions: fingerprint, manifest, the immutable version folder."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.dataset.versions import (
    MANIFEST_SCHEMA,
    ManifestError,
    build_manifest,
    dataset_fingerprint,
    load_manifest,
    manifest_json,
    validate_manifest,
    write_dataset_version,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline_tests.dataset.conftest import store_images

SHA_A = "a" * 64
SHA_B = "b" * 64


def tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_fingerprint_is_sha256_of_canonical_json_of_sorted_pairs() -> None:
    canonical = '{"character":"aya","images":[[1,"' + SHA_A + '"],[2,"' + SHA_B + '"]]}'
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert dataset_fingerprint("aya", [(2, SHA_B), (1, SHA_A)]) == expected
    assert dataset_fingerprint("aya", iter([(1, SHA_A), (2, SHA_B)])) == expected


def test_fingerprint_changes_with_slug_set_and_content() -> None:
    base = dataset_fingerprint("aya", [(1, SHA_A), (2, SHA_B)])
    assert dataset_fingerprint("ren", [(1, SHA_A), (2, SHA_B)]) != base
    assert dataset_fingerprint("aya", [(1, SHA_A)]) != base
    assert dataset_fingerprint("aya", [(1, SHA_A), (2, SHA_B), (3, "c" * 64)]) != base
    assert dataset_fingerprint("aya", [(1, SHA_A), (2, "c" * 64)]) != base
    assert dataset_fingerprint("aya", [(1, SHA_B), (2, SHA_A)]) != base
    assert dataset_fingerprint("aya", []) != dataset_fingerprint("ren", [])


@pytest.mark.parametrize(
    ("slug", "pairs", "message"),
    [
        ("aya", [(1, SHA_A), (1, SHA_B)], "more than once"),
        ("aya", [(1, "ABC")], "sha256"),
        ("aya", [(1, SHA_A.upper())], "sha256"),
        ("aya", [(True, SHA_A)], "image id"),
        ("aya", [(-1, SHA_A)], "image id"),
        ("../etc", [(1, SHA_A)], "slug"),
        ("", [(1, SHA_A)], "slug"),
    ],
)
def test_fingerprint_rejects_bad_input(slug: str, pairs: list, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        dataset_fingerprint(slug, pairs)


def test_build_manifest_is_deterministic_and_complete(data_root: DataRoot) -> None:
    images = store_images(data_root, [7, 3, 5])
    first = build_manifest("aya", "aya_char", images, {"license": "studio"})
    second = build_manifest("aya", "aya_char", list(reversed(images)), {"license": "studio"})
    assert manifest_json(first) == manifest_json(second)
    assert first["schema_version"] == 1
    assert first["character"] == "aya"
    assert first["trigger_word"] == "aya_char"
    assert first["provenance"] == {"license": "studio"}
    assert first["version_hash"] == dataset_fingerprint(
        "aya", [(i.image_id, i.sha256) for i in images]
    )
    assert [e["image_id"] for e in first["images"]] == [3, 5, 7]
    assert [e["file"] for e in first["images"]] == ["aya_0001.png", "aya_0002.png", "aya_0003.png"]
    entry = first["images"][0]
    by_id = {i.image_id: i for i in images}
    assert entry == {
        "image_id": 3,
        "sha256": by_id[3].sha256,
        "path": by_id[3].path,
        "width": 64,
        "height": 48,
        "origin": "generated",
        "provenance": {"seed": 3},
        "file": "aya_0001.png",
    }
    assert build_manifest("aya", "aya_char", images)["provenance"] == {}


def test_schema_is_a_json_schema_dict() -> None:
    assert MANIFEST_SCHEMA["type"] == "object"
    assert set(MANIFEST_SCHEMA["required"]) == {
        "schema_version",
        "character",
        "trigger_word",
        "version_hash",
        "images",
        "provenance",
    }
    json.dumps(MANIFEST_SCHEMA)


def _manifest(data_root: DataRoot) -> dict:
    return build_manifest("aya", "aya_char", store_images(data_root, [1, 2]))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("trigger_word"), "required"),
        (lambda m: m.update(extra=1), "unknown field"),
        (lambda m: m.update(schema_version=2), "schema_version"),
        (lambda m: m.update(images={}), "array"),
        (lambda m: m.update(trigger_word="aya, char"), "trigger_word"),
        (lambda m: m.update(trigger_word=" aya"), "trigger_word"),
        (lambda m: m.update(version_hash="0" * 64), "version_hash"),
        (lambda m: m.update(provenance=[]), "object"),
        (lambda m: m["images"][0].update(width=0), "at least 1"),
        (lambda m: m["images"][0].update(width=True), "integer"),
        (lambda m: m["images"][0].update(height="48"), "integer"),
        (lambda m: m["images"][0].update(sha256="x"), "sha256"),
        (lambda m: m["images"][0].update(path="../outside.png"), "relative"),
        (lambda m: m["images"][0].update(path="/abs/x.png"), "relative"),
        (lambda m: m["images"][0].update(file="sub/dir.png"), "file"),
        (lambda m: m["images"][1].update(file=m["images"][0]["file"]), "distinct"),
        (lambda m: m["images"][0].pop("origin"), "required"),
        (lambda m: m["images"].reverse(), "sorted"),
        (lambda m: m["images"][0]["provenance"].update(t=float("nan")), "plain JSON"),
    ],
)
def test_validate_manifest_rejects(data_root: DataRoot, mutate, message: str) -> None:
    manifest = _manifest(data_root)
    validate_manifest(copy.deepcopy(manifest))
    mutate(manifest)
    with pytest.raises(ManifestError, match=message):
        validate_manifest(manifest)


def test_validate_manifest_rejects_non_dict() -> None:
    with pytest.raises(ManifestError, match="object"):
        validate_manifest(["not", "a", "manifest"])


def test_write_dataset_version_layout_and_contents(data_root: DataRoot) -> None:
    images = store_images(data_root, [4, 9])
    manifest = build_manifest("aya", "aya_char", images)
    version_dir = write_dataset_version(data_root, manifest)
    assert version_dir == data_root.root / "datasets" / "aya" / manifest["version_hash"]
    assert (version_dir / "manifest.json").read_text() == manifest_json(manifest)
    assert json.loads((version_dir / "manifest.json").read_text()) == manifest
    for entry, image in zip(manifest["images"], images, strict=True):
        published = version_dir / "images" / entry["file"]
        assert published.read_bytes() == data_root.path(image.path).read_bytes()
    assert sorted(p.name for p in (version_dir / "images").iterdir()) == [
        "aya_0001.png",
        "aya_0002.png",
    ]
    # Nothing but the published version is left in the character's folder.
    assert [p.name for p in version_dir.parent.iterdir()] == [manifest["version_hash"]]
    assert load_manifest(version_dir) == manifest


def test_version_folder_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    roots = [DataRoot(tmp_path / "one"), DataRoot(tmp_path / "two")]
    folders = []
    for root in roots:
        manifest = build_manifest("aya", "aya_char", store_images(root, [1, 2, 3]))
        folders.append(write_dataset_version(root, manifest))
    assert folders[0].name == folders[1].name
    assert tree(folders[0]) == tree(folders[1])
    assert len(tree(folders[0])) == 4


def test_rewrite_of_existing_version_verifies_and_keeps_it(data_root: DataRoot) -> None:
    manifest = build_manifest("aya", "aya_char", store_images(data_root, [1, 2]))
    version_dir = write_dataset_version(data_root, manifest)
    before = tree(version_dir)
    stamp = (version_dir / "manifest.json").stat().st_mtime_ns
    assert write_dataset_version(data_root, copy.deepcopy(manifest)) == version_dir
    assert tree(version_dir) == before
    assert (version_dir / "manifest.json").stat().st_mtime_ns == stamp


def test_new_image_gives_new_version_folder(data_root: DataRoot) -> None:
    first = build_manifest("aya", "aya_char", store_images(data_root, [1, 2]))
    second = build_manifest("aya", "aya_char", store_images(data_root, [1, 2, 3]))
    assert first["version_hash"] != second["version_hash"]
    dir_one = write_dataset_version(data_root, first)
    dir_two = write_dataset_version(data_root, second)
    assert dir_one != dir_two
    assert len(list((dir_one / "images").iterdir())) == 2
    assert len(list((dir_two / "images").iterdir())) == 3


def test_tampered_source_image_is_refused_and_nothing_published(data_root: DataRoot) -> None:
    images = store_images(data_root, [1, 2])
    manifest = build_manifest("aya", "aya_char", images)
    other = Image.new("RGB", (64, 48), (1, 2, 3))
    other.save(data_root.path(images[1].path), format="PNG")
    with pytest.raises(ManifestError, match=r"image 2 .*sha256"):
        write_dataset_version(data_root, manifest)
    assert list((data_root.root / "datasets" / "aya").iterdir()) == []


def test_missing_source_image_is_named(data_root: DataRoot) -> None:
    images = store_images(data_root, [1, 2])
    manifest = build_manifest("aya", "aya_char", images)
    data_root.path(images[0].path).unlink()
    with pytest.raises(ManifestError, match=r"image 1 is missing"):
        write_dataset_version(data_root, manifest)
    assert list((data_root.root / "datasets" / "aya").iterdir()) == []


def test_tampered_published_version_is_detected(data_root: DataRoot) -> None:
    manifest = build_manifest("aya", "aya_char", store_images(data_root, [1, 2]))
    version_dir = write_dataset_version(data_root, manifest)
    published = version_dir / "images" / "aya_0002.png"
    published.unlink()  # break the hardlink first so the store's copy stays intact
    Image.new("RGB", (8, 8), (9, 9, 9)).save(published, format="PNG")
    with pytest.raises(ManifestError, match=r"image 2 .*sha256"):
        write_dataset_version(data_root, manifest)
    (version_dir / "images" / "stray.png").write_bytes(b"x")
    with pytest.raises(ManifestError, match="unexpected images"):
        write_dataset_version(data_root, manifest)


def test_load_manifest_errors(data_root: DataRoot, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path / "nowhere")
    manifest = build_manifest("aya", "aya_char", store_images(data_root, [1]))
    version_dir = write_dataset_version(data_root, manifest)
    renamed = version_dir.with_name("renamed")
    version_dir.rename(renamed)
    with pytest.raises(ManifestError, match="not named after"):
        load_manifest(renamed)
    (renamed / "manifest.json").write_text("{broken")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(renamed)
