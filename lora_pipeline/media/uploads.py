"""Uploaded files: typed by content, size-limited, checked whole, copied into the data root.

The type comes from the bytes, never the name: an image header makes it an image (decoded in
full, with the pixel-count guard of `load_image`); otherwise its first bytes must be one of the
video containers `video.detect_container` knows, and ffmpeg (forced to that demuxer, reading
no other file) must read it from the first packet to the last. The stored copy is named by its
hash with the container's own suffix, so nothing later takes it for something else. Playlists
and manifests (HLS, DASH, m3u, ffconcat), which name other files, are refused, as is anything
else, with the reason.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.errors import PipelineError, disk_message
from lora_pipeline.files import atomic_path
from lora_pipeline.media.images import InvalidImageError, load_image, sniff_image_format
from lora_pipeline.media.store import DataRoot, UnsafePathError, sha256_file
from lora_pipeline.media.video import PlaylistError, VideoError, verify_video

MAX_UPLOAD_BYTES = 4 * 1024**3
UPLOADS_DIR = "uploads"
INCOMING = ("uploads", "incoming")
# A web upload is copied into its own folder of uploads/incoming and removed at once; one
# older than this was left by a crash (an upload in progress keeps writing, so its time moves).
INCOMING_MAX_AGE_S = 3600.0


# Characters that would break a message into lines (a file may be named with any of them).
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class UploadError(PipelineError, ValueError):
    """An upload that cannot be used; the message names the file and the reason, on one line
    whatever the file is called."""

    def __init__(self, message: str) -> None:
        super().__init__(_LINE_BREAKING.sub("?", message))


@dataclass(frozen=True)
class StoredUpload:
    kind: str  # "image_upload" or "video_upload"
    relpath: str
    # False when the same content was stored already (by an earlier upload); not part of what
    # the upload is, so two stores of one file compare equal.
    created: bool = field(default=True, compare=False)


def store_upload(path: Path, root: DataRoot, max_bytes: int = MAX_UPLOAD_BYTES) -> StoredUpload:
    """Check an uploaded file and store it in the data root; UploadError says why not."""
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{path.name or path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{path.name}: the file is empty")
    if size > max_bytes:
        raise UploadError(f"{path.name}: {size} bytes is over the {max_bytes} byte upload limit")
    try:
        if sniff_image_format(path) is not None:
            return _store_image(path, root)
        return _store_video(path, root)
    except OSError as exc:
        raise UploadError(f"{path.name}: {disk_message(exc)}") from exc


def _store_image(path: Path, root: DataRoot) -> StoredUpload:
    try:
        stored = root.put_image(load_image(path, name=path.name))
    except InvalidImageError as exc:
        raise UploadError(str(exc)) from exc
    return StoredUpload("image_upload", stored.relpath, stored.created)


def _store_video(path: Path, root: DataRoot) -> StoredUpload:
    try:
        info = verify_video(path)
    except PlaylistError as exc:
        raise UploadError(str(exc)) from exc
    except VideoError as exc:
        raise UploadError(f"{path.name}: neither an image nor a readable video ({exc})") from exc
    # Named by content, with the suffix of the container it really is.
    relpath = f"{UPLOADS_DIR}/{sha256_file(path)}{info.container.suffix}"
    target = root.path(relpath)
    if target.is_file() and target.stat().st_size == path.stat().st_size:
        return StoredUpload("video_upload", relpath, created=False)
    with atomic_path(target) as temporary:
        shutil.copyfile(path, temporary)
    return StoredUpload("video_upload", relpath)


def discard_upload(root: DataRoot, stored: StoredUpload) -> None:
    """Remove a stored upload that no request will use (its request was refused)."""
    if not stored.created:
        return  # an earlier upload of the same content owns the file
    with contextlib.suppress(OSError, UnsafePathError):
        root.path(stored.relpath).unlink()


def _newest_mtime(folder: Path) -> float:
    times = [folder.lstat().st_mtime]
    times += [child.lstat().st_mtime for child in folder.rglob("*")]
    return max(times)


def sweep_incoming(root: DataRoot, max_age_s: float = INCOMING_MAX_AGE_S) -> int:
    """Remove what crashed web uploads left in uploads/incoming; returns how many entries."""
    incoming = root.path("/".join(INCOMING))
    if not incoming.is_dir():
        return 0
    removed, cutoff = 0, time.time() - max_age_s
    for entry in incoming.iterdir():
        try:
            newest = _newest_mtime(entry) if entry.is_dir() else entry.lstat().st_mtime
        except OSError:
            continue  # removed meanwhile
        if newest >= cutoff:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed += 1
    return removed
