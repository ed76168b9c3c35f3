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
    # Stored under the suffix of what it is, never the name it came with.
    assert stored.relpath == f"uploads/{sha256_file(synthetic_video)}.mp4"
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


def _playlists(video: Path) -> dict[str, bytes]:
    """Playlists and manifests naming a video elsewhere on the machine, as an attacker would."""
    return {
        "clip.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{video}\n#EXT-X-ENDLIST\n",
        "clip.mp4": f"\ufeff#EXTM3U\n#EXTINF:4,\nfile://{video}\n",
        "clip.m3u": f"#EXTM3U\n{video}\n",
        "clip.pls": f"[playlist]\nFile1={video}\nNumberOfEntries=1\n",
        "clip.mpd": '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011">'
        f"<BaseURL>file://{video}</BaseURL></MPD>",
        "clip.ffconcat": f"ffconcat version 1.0\nfile '{video}'\n",
        "list.txt": f"file '{video}'\n",
    }.items()


@pytest.mark.parametrize("index", range(7))
def test_playlists_and_manifests_are_refused(
    tmp_path: Path, root: DataRoot, synthetic_video: Path, index: int
) -> None:
    name, text = list(_playlists(synthetic_video))[index]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UploadError, match="playlist or manifest|not a readable video") as error:
        store_upload(path, root)
    assert "\n" not in str(error.value)
    assert not (root.root / "uploads").exists() and not (root.root / "images").exists()


def test_a_real_video_named_like_a_playlist_is_stored_as_what_it_is(
    tmp_path: Path, root: DataRoot, synthetic_video: Path
) -> None:
    path = tmp_path / "clip.m3u8"
    path.write_bytes(synthetic_video.read_bytes())
    stored = store_upload(path, root)
    assert stored.kind == "video_upload" and stored.relpath.endswith(".mp4")


def test_a_full_disk_is_one_line(
    tmp_path: Path, root: DataRoot, synthetic_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from lora_pipeline.media import uploads

    def full(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(uploads.shutil, "copyfile", full)
    with pytest.raises(UploadError, match="clip.mp4: the disk is full") as error:
        store_upload(synthetic_video, root)
    assert "\n" not in str(error.value)
    assert [p for p in root.root.rglob("*") if p.is_file()] == []


def test_sweep_incoming_removes_only_old_leftovers(root: DataRoot) -> None:
    import os

    from lora_pipeline.media.uploads import sweep_incoming

    incoming = root.dir("uploads", "incoming")
    old, fresh = incoming / "tmpold", incoming / "tmpfresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "video.mp4").write_bytes(b"x")
    for path in (old, old / "video.mp4"):
        os.utime(path, (1_000_000, 1_000_000))
    assert sweep_incoming(root) == 1
    assert not old.exists() and (fresh / "video.mp4").exists()
