"""Uploaded files: typed by content, size-limited, copied into the data root before use."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.media.video import VideoError, probe_video

MAX_UPLOAD_BYTES = 4 * 1024**3


class UploadError(ValueError):
    """An upload that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class StoredUpload:
    kind: str  # "image_upload" or "video_upload"
    relpath: str


def store_upload(path: Path, root: DataRoot, max_bytes: int = MAX_UPLOAD_BYTES) -> StoredUpload:
    if not path.is_file():
        raise UploadError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{path.name}: the file is empty")
    if size > max_bytes:
        raise UploadError(f"{path.name}: {size} bytes is over the {max_bytes} byte upload limit")
    try:
        stored = root.put_image(load_image(path, name=path.name))
        return StoredUpload("image_upload", stored.relpath)
    except InvalidImageError as image_error:
        if "not an image" not in str(image_error):
            raise UploadError(str(image_error)) from image_error
    try:
        probe_video(path)
    except VideoError as exc:
        raise UploadError(f"{path.name}: neither an image nor a readable video ({exc})") from exc
    # The stored name is the content hash; the suffix is kept only when it is a plain one.
    suffix = (
        path.suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,8}", path.suffix.lower()) else ".bin"
    )
    relpath = f"uploads/{sha256_file(path)}{suffix}"
    target = root.path(relpath)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        shutil.copyfile(path, tmp)
        tmp.replace(target)
    return StoredUpload("video_upload", relpath)
