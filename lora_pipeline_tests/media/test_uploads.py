"""Uploads: typed by content, size-limited, corrupt, truncated and oversized files refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.media.images import load_image
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.media.uploads import UploadError, store_upload
from lora_pipeline.media.video import VideoError, verify_video


@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels, with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def test_image_is_typed_by_content_not_name(tmp_path: Path, root: DataRoot) -> None:
    path = tmp_path / "holiday.mp4"
    path.write_bytes(_png())
    stored = store_upload(path, root)
    assert stored.kind == "image_upload"
    assert stored.relpath.startswith("images/") and stored.relpath.endswith(".png")
    assert load_image(root.path(stored.relpath)).size == (64, 48)


def test_video_is_typed_by_content_not_name(
    tmp_path: Path, root: DataRoot, synthetic_video: Path
) -> None:
    path = tmp_path / "frame.png"
    path.write_bytes(synthetic_video.read_bytes())
    stored = store_upload(path, root)
    assert stored.kind == "video_upload"
    assert stored.relpath == f"uploads/{sha256_file(synthetic_video)}.png"
    assert sha256_file(root.path(stored.relpath)) == sha256_file(synthetic_video)
    # Idempotent: the same upload again is the same stored file.
    assert store_upload(path, root) == stored
    assert [p.name for p in root.path("uploads").iterdir()] == [Path(stored.relpath).name]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"just some text, not a picture", "neither an image nor a readable video"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "holiday"),
    ],
)
def test_bad_files_are_refused_with_the_reason(
    tmp_path: Path, root: DataRoot, content: bytes, message: str
) -> None:
    path = tmp_path / "holiday.png"
    path.write_bytes(content)
    with pytest.raises(UploadError, match=message) as error:
        store_upload(path, root)
    assert "\n" not in str(error.value)
    assert not (root.root / "images").exists() and not (root.root / "uploads").exists()


def test_truncated_image_is_refused(tmp_path: Path, root: DataRoot) -> None:
    data = _png((256, 256))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UploadError, match="truncated|corrupt"):
        store_upload(path, root)


def test_truncated_video_is_refused(tmp_path: Path, root: DataRoot, synthetic_video: Path) -> None:
    data = synthetic_video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(UploadError, match="truncated"):
        store_upload(path, root)
    with pytest.raises(VideoError, match="truncated"):
        verify_video(path)
    assert not (root.root / "uploads").exists()


def test_oversized_upload_is_refused_before_reading(tmp_path: Path, root: DataRoot) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png())
    with pytest.raises(UploadError, match="over the 100 byte upload limit"):
        store_upload(path, root, max_bytes=100)


def test_decompression_bomb_is_refused(tmp_path: Path, root: DataRoot) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(40_000))
    with pytest.raises(UploadError, match="too large"):
        store_upload(path, root)


def test_missing_file(tmp_path: Path, root: DataRoot) -> None:
    with pytest.raises(UploadError, match="no such file"):
        store_upload(tmp_path / "nope.mp4", root)
