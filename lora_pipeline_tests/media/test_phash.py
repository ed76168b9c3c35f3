from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lora_pipeline.media.phash import (
    HashIndex,
    InvalidHashError,
    _dct_matrix,
    frame_difference,
    grey_thumbnail,
    hamming,
    hash_from_hex,
    hash_to_hex,
    perceptual_hash,
    sharpness,
)


def _picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize(size, Image.Resampling.BICUBIC)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_dct_matrix_is_orthonormal() -> None:
    matrix = _dct_matrix(32)
    assert np.allclose(matrix @ matrix.T, np.eye(32))


def test_hash_survives_resizing_and_reencoding() -> None:
    image = _picture(1)
    original = perceptual_hash(image)
    assert hamming(original, perceptual_hash(image.resize((640, 480)))) <= 2
    assert hamming(original, perceptual_hash(_jpeg(image, 40))) <= 4
    assert hamming(original, perceptual_hash(image.filter(ImageFilter.GaussianBlur(1)))) <= 4


def test_different_pictures_are_far_apart() -> None:
    hashes = [perceptual_hash(_picture(seed)) for seed in range(8)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 12
    assert 24 <= np.mean(distances) <= 40  # about half of the 64 bits


def test_hex_round_trip_and_validation() -> None:
    value = perceptual_hash(_picture(3))
    text = hash_to_hex(value)
    assert len(text) == 16 and hash_from_hex(text) == value
    assert hash_to_hex(0) == "0" * 16
    for bad in ("xyz", "0" * 15, "0" * 17, "ABCDEF0123456789"):
        with pytest.raises(InvalidHashError):
            hash_from_hex(bad)


def test_hash_index_nearest() -> None:
    index = HashIndex([0b1111, 0xFFFF_FFFF_FFFF_FFFF])
    assert len(index) == 2
    assert index.nearest(0b1110) == 1
    assert index.nearest(0xFFFF_FFFF_FFFF_FFF0) == 4
    assert index.has_near(0, 4) and not index.has_near(0, 3)
    for value in range(100):
        index.add(value << 20)
    assert len(index) == 102 and index.nearest(99 << 20) == 0
    assert HashIndex().nearest(5) is None and not HashIndex().has_near(5, 64)


def test_frame_difference() -> None:
    a = grey_thumbnail(_picture(1))
    assert frame_difference(a, a) == 0.0
    black = grey_thumbnail(Image.new("RGB", (64, 64)))
    white = grey_thumbnail(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert frame_difference(black, white) == pytest.approx(1.0)
    assert 0.05 < frame_difference(a, grey_thumbnail(_picture(2))) < 0.6


def test_sharpness_drops_with_blur_and_ignores_resolution() -> None:
    image = _picture(4, size=(1024, 768))
    values = [sharpness(image.filter(ImageFilter.GaussianBlur(r))) for r in (0, 2, 6)]
    assert values[0] > values[1] > values[2]
    # Measured at a fixed size: the same picture at twice the resolution scores the same.
    assert sharpness(image.resize((2048, 1536))) == pytest.approx(values[0], rel=0.1)
    assert sharpness(Image.new("RGB", (64, 64), (9, 9, 9))) == 0.0
    assert sharpness(Image.new("RGB", (2, 2))) == 0.0
