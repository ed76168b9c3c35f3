"""Uploaded files: typed by content, size-limited, checked whole, copied into the data root.

The type comes from the bytes, never the name: an image header makes it an image (decoded in
full, with the pixel-count guard of `load_image`); otherwise ffmpeg must read it as a video
from the first packet to the last. Anything else is refused with the reason.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_path
from lora_pipeline.media.images import InvalidImageError, load_image, sniff_image_format
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.media.video import VideoError, verify_video

MAX_UPLOAD_BYTES = 4 * 1024**3
UPLOADS_DIR = "uploads"


class UploadError(PipelineError, ValueError):
    """An upload that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class StoredUpload:
    kind: str  # "image_upload" or "video_upload"
    relpath: str


def store_upload(path: Path, root: DataRoot, max_bytes: int = MAX_UPLOAD_BYTES) -> StoredUpload:
    """Check an uploaded file and store it in the data root; UploadError says why not."""
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{path.name}: the file is empty")
    if size > max_bytes:
        raise UploadError(f"{path.name}: {size} bytes is over the {max_bytes} byte upload limit")
    if sniff_image_format(path) is not None:
        return _store_image(path, root)
    try:
        verify_video(path)
    except VideoError as exc:
        raise UploadError(f"{path.name}: neither an image nor a readable video ({exc})") from exc
    return _store_video(path, root)


def _store_image(path: Path, root: DataRoot) -> StoredUpload:
    try:
        stored = root.put_image(load_image(path, name=path.name))
    except InvalidImageError as exc:
        raise UploadError(str(exc)) from exc
    return StoredUpload("image_upload", stored.relpath)


def _store_video(path: Path, root: DataRoot) -> StoredUpload:
    # The stored name is the content hash; the suffix is kept only when it is a plain one.
    suffix = path.suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"
    relpath = f"{UPLOADS_DIR}/{sha256_file(path)}{suffix}"
    target = root.path(relpath)
    if not target.exists():
        with atomic_path(target) as temporary:
            shutil.copyfile(path, temporary)
    return StoredUpload("video_upload", relpath)
