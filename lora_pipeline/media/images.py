"""Safe image IO: decode untrusted files into plain RGB images, or say clearly why not.

The format is detected from content (a PNG named .jpg loads; a text file named .png does not),
the pixel count is checked from the header before any pixel is decoded, and the file is parsed
twice (verify, then a fresh full load) so that truncated or corrupt data is caught here rather
than later in a training run.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_pipeline.errors import PipelineError

MAX_IMAGE_PIXELS = 64_000_000
# Larger than any sane reference image; stops a huge file being read into memory at all.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# Raster formats people actually use; anything else (EPS, PDF, ...) is refused, never parsed.
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# Transparent pixels are flattened onto white, the usual background of character art.
BACKGROUND = (255, 255, 255)
PNG_COMPRESS_LEVEL = 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_RGB = 2
PNG_FILTER_NONE, PNG_FILTER_UP = 0, 2
PNG_BAND_ROWS = 64  # rows filtered and compressed at a time
_PNG_END = b"IEND\xaeB`\x82"


class InvalidImageError(PipelineError, ValueError):
    """An image file that cannot be used: corrupt, truncated, empty, too large or not an image."""


def _read_source(source: Path | bytes, name: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"{name}: no such file")
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidImageError(f"{name}: too large ({size} bytes, limit {MAX_IMAGE_BYTES})")
        data = path.read_bytes()
    if not data:
        raise InvalidImageError(f"{name}: zero bytes")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImageError(f"{name}: too large ({len(data)} bytes)")
    return data


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open from the header only and refuse oversized images before decoding them."""
    with warnings.catch_warnings():
        # We enforce our own limit below; PIL's global warning is not a guard.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=_formats())
        except UnidentifiedImageError as exc:
            raise InvalidImageError(f"{name}: not an image (unrecognised content)") from exc
        except Image.DecompressionBombError as exc:
            raise InvalidImageError(f"{name}: too large ({exc})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImageError(f"{name}: corrupt or truncated image ({exc})") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"{name}: corrupt image (size {width}x{height})")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{name}: too large ({width}x{height} = {width * height} pixels, "
            f"limit {max_pixels}; possible decompression bomb)"
        )
    return image


def sniff_image_format(path: Path) -> str | None:
    """The image format of a file judged from its header ("PNG", "JPEG", ...), or None when
    the content is not one of the allowed image formats. Reads only the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=_formats()) as image:
                return image.format
        except UnidentifiedImageError:
            return None
        except Image.DecompressionBombError:
            return "oversized image"
        except (OSError, SyntaxError, ValueError):
            # A recognised header with damage after it: an image, which load_image rejects.
            return "damaged image"


def _decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    image = _open(data, name, max_pixels)
    try:
        image.verify()
    except Exception as exc:  # verify raises assorted types on damaged data
        raise InvalidImageError(f"{name}: corrupt or truncated image ({_reason(exc)})") from exc
    if image.format == "PNG" and _PNG_END not in data:
        # PIL accepts a PNG cut inside its end chunk; a complete file always has one.
        raise InvalidImageError(f"{name}: truncated image (PNG end marker missing)")
    # verify() leaves the image unusable, so decode a fresh one in full.
    image = _open(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:  # truncation surfaces as OSError, bad data as several types
        raise InvalidImageError(f"{name}: corrupt or truncated image ({_reason(exc)})") from exc
    return image


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of any PIL image; transparency is flattened onto a white background."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale would clip to white in convert("RGB"); scale to 8 bits first.
        image = image.point(lambda value: value / 256).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, BACKGROUND)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def load_image(
    source: Path | bytes,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode an untrusted image file (or its bytes) into a fully loaded RGB image.

    Raises InvalidImageError naming the file and the reason. EXIF orientation is applied and
    for animations the first frame is taken.
    """
    label = name or (str(source) if isinstance(source, Path | str) else "image bytes")
    data = _read_source(source, label)
    image = _decode(data, label, max_pixels)
    try:
        # In place, and no copy of an RGB image below: the decoded pixels are this function's
        # own, and each copy would cost a big upload its size again (a 7900x7900 PNG is 250 MB
        # decoded; three of them took the review app past 1 GB).
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # a broken EXIF block is damage like any other
        raise InvalidImageError(f"{label}: corrupt EXIF data ({_reason(exc)})") from exc
    rgb = image if image.mode == "RGB" else to_rgb(image)
    rgb.info = {}
    return rgb


def encode_png(image: Image.Image) -> bytes:
    """Deterministic PNG bytes of the image's RGB pixels: no metadata, fixed settings.

    Written here rather than by Pillow, whose encoder tries every PNG filter on every row
    (half the time of an every-frame ingest) and cannot be told not to: each row is "up"
    filtered (the difference to the row above, which suits flat-coloured anime frames), then
    zlib at PNG_COMPRESS_LEVEL. Pillow and every PNG reader decode it. The rows go through in
    bands, so a huge upload costs a band's memory, not copies of the whole picture."""
    rgb = image if image.mode == "RGB" else to_rgb(image)
    width, height = rgb.size
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL)
    parts, above = [], None
    for top in range(0, height, PNG_BAND_ROWS):
        band = np.asarray(rgb.crop((0, top, width, min(top + PNG_BAND_ROWS, height))))
        parts.append(compressor.compress(_up_filtered(band.reshape(len(band), width * 3), above)))
        above = band[-1].reshape(width * 3)
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, PNG_COLOUR_RGB, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    return PNG_SIGNATURE + body


def _up_filtered(rows: np.ndarray, above: np.ndarray | None) -> bytes:
    """PNG scanlines of these rows: filter byte, then each row minus the one above (mod 256);
    the picture's first row has no row above and is left unfiltered."""
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = PNG_FILTER_UP
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    if above is None:
        filtered[0, 0], filtered[0, 1:] = PNG_FILTER_NONE, rows[0]
    else:
        np.subtract(rows[0], above, out=filtered[0, 1:])
    return filtered.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def image_sha256(image: Image.Image) -> str:
    """The content address DataRoot.put_image gives this image."""
    return hashlib.sha256(encode_png(image)).hexdigest()
