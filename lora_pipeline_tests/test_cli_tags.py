"""Image tags and asset types (seed 003): `image tag` stores them in the registry, the dataset
selection reads them, and `train --tag/--tag-any/--asset-type` trains on the images they
select; bad input is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterRunStatus
from PIL import Image as PILImage

from lora_pipeline.dataset.selection import DatasetSelection
from lora_pipeline.dataset.service import build_approved_dataset
from lora_pipeline.defs.instance import open_instance
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Image
from lora_pipeline_tests import test_cli
from lora_pipeline_tests.test_cli import one_error_line, run
from lora_pipeline_tests.test_cli_runs import approve, studio_registry

pytestmark = pytest.mark.slow
cast = test_cli.cast  # the fixture: a home with project demo and character aiko


def tags_of(image_id: int) -> list[str]:
    with studio_registry().session() as session:
        return commands.stored_tags(session.get(Image, image_id))


def test_tags_are_added_removed_and_the_asset_type_replaced(cast: Path, capsys) -> None:
    approve(2)
    code, out, err = run(
        capsys, "image", "tag", "1", "2", "--add", "style:anime", "--add", "Solo",
        "--asset-type", "character",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        "image 1: style:anime, Solo, asset_type:character",
        "image 2: style:anime, Solo, asset_type:character",
    ]
    code, out, _ = run(capsys, "image", "tag", "2", "--remove", "solo", "--asset-type", "ui_icon")
    assert code == 0 and out.strip() == "image 2: style:anime, asset_type:ui_icon"
    assert tags_of(1) == ["style:anime", "Solo", "asset_type:character"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["1"], "say what to change"),
        (["99", "--add", "x"], "image 99"),
        (["1", "--add", "a,b"], "may not hold commas"),
        (["1", "--add", " "], "tag must not be empty"),
        (["1", "--add", "x" * 65], "too long"),
    ],
)
def test_bad_tagging_is_one_line(cast: Path, capsys, argv: list[str], message: str) -> None:
    approve(1)
    code, _, err = run(capsys, "image", "tag", *argv)
    assert code == 2 and message in one_error_line(err)
    assert tags_of(1) == []


def approve_stored(root: DataRoot, count: int) -> None:
    """`count` approved images of aiko, each a real file in the data root."""
    with studio_registry().session() as session:
        character = commands.get_character(session, "aiko")
        for n in range(count):
            stored = root.put_image(PILImage.new("RGB", (64, 64), (n * 20, 90, 90)))
            image, _ = commands.add_image(
                session, character.id, stored.sha256, stored.relpath, 64, 64, "generated"
            )
            commands.approve_image(session, image.id)


def test_a_tag_filtered_dataset_and_training(cast: Path, capsys) -> None:
    store, root = studio_registry(), DataRoot(cast / "data")
    approve_stored(root, 12)
    assert run(capsys, "image", "tag", *map(str, range(1, 11)), "--asset-type", "character")[0] == 0
    assert run(capsys, "image", "tag", "11", "12", "--add", "style:chibi")[0] == 0
    chosen = build_approved_dataset(
        store, root, "aiko", DatasetSelection(("asset_type:character",))
    )
    assert chosen.image_count == 10
    either = DatasetSelection(("asset_type:character", "style:chibi"), "any")
    assert build_approved_dataset(store, root, "aiko", either).image_count == 12
    # Two approved chibi images are not enough to train on.
    code, _, err = run(capsys, "train", "aiko", "--tag", "style:chibi")
    assert code == 2 and "aiko has 2/10 approved images matching style:chibi" in one_error_line(err)
    code, out, err = run(capsys, "train", "aiko", "--asset-type", "character", "--max-steps", "5")
    assert code == 0, err
    run_id = out.split("queued as run ")[1].split(":")[0]
    with open_instance(cast / "dagster_home") as instance:
        queued = instance.get_run_by_id(run_id)
    assert queued.status == DagsterRunStatus.QUEUED
    assert queued.run_config["ops"]["approved_dataset"]["config"] == {
        "tags": ["asset_type:character"],
        "tag_match": "all",
    }
    code, out, _ = run(
        capsys, "train", "aiko", "--tag", "style:chibi", "--tag-any", "--asset-type", "character"
    )
    assert code == 0
