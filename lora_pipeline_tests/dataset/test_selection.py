"""Selection rules (approved only, tags all/any) and dataset provenance in the manifest."""

from __future__ import annotations

import pytest

from lora_pipeline.dataset.selection import (
    DatasetSelection,
    SelectionError,
    dataset_provenance,
    image_tags,
    select_images,
)
from lora_pipeline.dataset.versions import (
    ManifestError,
    build_manifest,
    load_manifest,
    manifest_json,
    validate_manifest,
    write_dataset_version,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline_tests.dataset.conftest import store_images


def test_image_tags_come_from_provenance_and_origin() -> None:
    assert image_tags({"tags": ["Style:Anime", " pose:standing ", ""]}, "frame") == {
        "style:anime",
        "pose:standing",
        "origin:frame",
    }
    assert image_tags({"tags": {"assetType": "character"}}, "generated") == {
        "assettype:character",
        "origin:generated",
    }
    assert image_tags({}, "upload") == {"origin:upload"}


def test_selection_all_and_any() -> None:
    tags = frozenset({"style:anime", "origin:frame"})
    assert DatasetSelection().accepts(tags)
    assert DatasetSelection(("style:anime", "origin:frame")).accepts(tags)
    assert not DatasetSelection(("style:anime", "origin:generated")).accepts(tags)
    assert DatasetSelection(("STYLE:ANIME", "origin:generated"), "any").accepts(tags)
    assert not DatasetSelection(("style:chibi",), "any").accepts(tags)


def test_selection_is_recorded_canonically() -> None:
    selection = DatasetSelection(("b", " a ", "b"), "any")
    assert selection.record() == {"status": "approved", "tags": ["a", "b"], "match": "any"}
    with pytest.raises(SelectionError, match="tag match"):
        DatasetSelection((), "some")
    with pytest.raises(SelectionError, match="non-empty"):
        DatasetSelection(("",))


def test_select_images(data_root: DataRoot) -> None:
    images = store_images(data_root, [1, 2, 3, 4])  # odd ids are generated, even ones frames
    chosen = select_images(images, DatasetSelection(("origin:generated",)))
    assert [image.image_id for image in chosen] == [1, 3]
    assert select_images(images, DatasetSelection()) == images


def test_dataset_provenance() -> None:
    provenance = dataset_provenance(
        DatasetSelection(("style:anime",)),
        {
            "source": " Studio trailer S2 ",
            "author": "Studio A",
            "license": "internal use",
            "url": "https://example.com/trailer",
            "notes": "   ",
        },
    )
    assert provenance == {
        "source": "Studio trailer S2",
        "author": "Studio A",
        "license": "internal use",
        "url": "https://example.com/trailer",
        "selection": {"status": "approved", "tags": ["style:anime"], "match": "all"},
    }
    with pytest.raises(SelectionError, match="provenance.url"):
        dataset_provenance(DatasetSelection(), {"url": "ftp://example.com"})
    with pytest.raises(SelectionError, match="unknown provenance field"):
        dataset_provenance(DatasetSelection(), {"licence": "x"})
    with pytest.raises(SelectionError, match="must be text"):
        dataset_provenance(DatasetSelection(), {"notes": 3})


def test_manifest_validates_provenance(data_root: DataRoot) -> None:
    images = store_images(data_root, [1])
    provenance = dataset_provenance(DatasetSelection(), {"author": "me"})
    validate_manifest(build_manifest("aya", "aya", images, provenance))
    with pytest.raises(ManifestError, match="unknown field"):
        build_manifest("aya", "aya", images, {"owner": "me"})
    with pytest.raises(ManifestError, match=r"provenance\.selection\.match"):
        build_manifest(
            "aya", "aya", images, {"selection": {"status": "approved", "tags": [], "match": "x"}}
        )


def test_existing_version_keeps_its_first_provenance(data_root: DataRoot) -> None:
    images = store_images(data_root, [1, 2])
    first = build_manifest("aya", "aya", images, {"author": "first"})
    second = build_manifest("aya", "aya", images, {"author": "second"})
    assert first["version_hash"] == second["version_hash"]
    version_dir = write_dataset_version(data_root, first)
    assert write_dataset_version(data_root, second) == version_dir
    assert load_manifest(version_dir)["provenance"] == {"author": "first"}
    assert (version_dir / "manifest.json").read_text() == manifest_json(first)
    # Anything else that differs is refused.
    other_trigger = build_manifest("aya", "aya_two", images)
    with pytest.raises(ManifestError, match="differs"):
        write_dataset_version(data_root, other_trigger)
