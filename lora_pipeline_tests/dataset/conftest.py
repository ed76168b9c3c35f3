"""Helpers of the dataset tests: a data root holding a few real, distinct PNG images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.dataset.versions import ManifestImage
from lora_pipeline.media.store import DataRoot


def colour_of(index: int) -> tuple[int, int, int]:
    """A distinct solid colour per index, so every image has its own sha256."""
    return (index * 37 % 256, index * 11 % 256, 200 - index)


def store_images(
    root: DataRoot, ids: Sequence[int], size: tuple[int, int] = (64, 48)
) -> list[ManifestImage]:
    images = []
    for image_id in ids:
        stored = root.put_image(Image.new("RGB", size, colour_of(image_id)))
        images.append(
            ManifestImage(
                image_id=image_id,
                sha256=stored.sha256,
                path=stored.relpath,
                width=stored.width,
                height=stored.height,
                origin="generated" if image_id % 2 else "frame",
                provenance={"seed": image_id},
            )
        )
    return images


@pytest.fixture
def data_root(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")
