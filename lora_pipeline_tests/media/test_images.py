from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.media.images import (
    MAX_IMAGE_PIXELS,
    InvalidImageError,
    encode_png,
    image_sha256,
    load_image,
)
from lora_pipeline.media.store import DataRoot


def _gradient(size: tuple[int, int] = (64, 48)) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [(x * 4 % 256, y * 5 % 256, (x + y) % 256) for y in range(height) for x in range(width)]
    )
    return image


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_load_as_rgb(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(_encoded(_gradient(), fmt))
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert image.getpixel((10, 10)) is not None  # pixels are loaded, not lazy


def test_format_comes_from_content_not_name(tmp_path: Path) -> None:
    renamed = tmp_path / "actually_png.jpg"
    renamed.write_bytes(_encoded(_gradient(), "PNG"))
    assert load_image(renamed).tobytes() == _gradient().tobytes()
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not a picture\n")
    with pytest.raises(InvalidImageError, match=r"notes\.png: not an image"):
        load_image(fake)


def test_video_named_png_is_not_an_image(tmp_path: Path, synthetic_video: Path) -> None:
    fake = tmp_path / "frame.png"
    fake.write_bytes(synthetic_video.read_bytes())
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(fake)


def test_unsupported_formats_are_refused(tmp_path: Path) -> None:
    eps = tmp_path / "drawing.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(eps)


def test_zero_bytes_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(InvalidImageError, match=r"empty\.png: zero bytes"):
        load_image(empty)
    with pytest.raises(InvalidImageError, match="zero bytes"):
        load_image(b"")
    with pytest.raises(InvalidImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_files_are_detected(tmp_path: Path, fmt: str) -> None:
    data = _encoded(_gradient((256, 256)), fmt, **({"quality": 95} if fmt != "PNG" else {}))
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidImageError, match=r"cut\.\w+: (corrupt|truncated)|truncated"):
        load_image(path)


def test_corrupt_png_data_is_detected(tmp_path: Path) -> None:
    data = bytearray(_encoded(_gradient(), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidImageError, match=r"flipped\.png: corrupt"):
        load_image(path)


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares a huge canvas (a decompression bomb)."""
    data = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr_start = 8 + 8  # signature, then chunk length and type
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("side", [9_000, 20_000])
def test_decompression_bomb_is_refused_from_header(side: int) -> None:
    assert side * side > MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own bomb warning must not leak out either
        with pytest.raises(InvalidImageError, match="bomb.png: too large"):
            load_image(_png_claiming_size(side, side), name="bomb.png")


def test_max_pixels_is_configurable() -> None:
    data = _encoded(_gradient((100, 100)), "PNG")
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(data, max_pixels=9_999)


def test_transparency_is_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    image = load_image(_encoded(rgba, "PNG"))
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (0, 0, 255)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = _encoded(_gradient((64, 48)), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (48, 64)


def test_error_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match=r"^upload 3\.png: not an image"):
        load_image(b"garbage bytes", name="upload 3.png")
    with pytest.raises(InvalidImageError, match=r"^image bytes: not an image"):
        load_image(b"garbage bytes")


def test_image_sha256_matches_put_image(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    image = _gradient()
    assert image_sha256(image) == root.put_image(image).sha256
    assert image_sha256(image) != image_sha256(_gradient((64, 47)))


def test_png_cut_inside_its_end_chunk_is_truncated() -> None:
    data = _encoded(_gradient(), "PNG")
    assert load_image(data + b"trailing bytes are harmless").size == (64, 48)
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(data[:-1])


def test_sixteen_bit_greyscale_keeps_its_range() -> None:
    deep = Image.new("I;16", (2, 1))
    deep.putpixel((0, 0), 65535)
    deep.putpixel((1, 0), 32768)
    image = load_image(_encoded(deep, "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (128, 128, 128)


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (640, 360)])
def test_encode_png_decodes_to_the_same_pixels(size: tuple[int, int]) -> None:
    """The project's own PNG writer: any reader (Pillow here, after its verify) gives back
    every pixel, the bytes are the same each time, and nothing but the pixels is written."""
    import numpy as np

    rng = np.random.default_rng(size[0])
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 2 :] = pixels[0]  # flat rows too: the "up" filter's differences are 0
    image = Image.fromarray(pixels, "RGB")
    data = encode_png(image)
    assert data == encode_png(image.copy())
    Image.open(io.BytesIO(data)).verify()
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "RGB" and decoded.size == size and not decoded.info
    assert (np.asarray(decoded) == pixels).all()


def test_encode_png_flattens_other_modes_as_loading_does() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    grey = Image.new("L", (4, 4), 77)
    assert Image.open(io.BytesIO(encode_png(rgba))).getpixel((0, 0)) == (255, 255, 255)
    assert Image.open(io.BytesIO(encode_png(grey))).getpixel((0, 0)) == (77, 77, 77)
