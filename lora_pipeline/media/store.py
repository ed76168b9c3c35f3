"""The data root: every file the pipeline writes lives under it, addressed by relative paths.

Images are content-addressed (`images/ab/<sha256>.png`) so the same picture arriving from two
sources is stored once and its hash is its identity in the registry. All writes go through a
temporary file renamed into place (lora_pipeline.files), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_write_bytes
from lora_pipeline.media.images import encode_png

IMAGES_DIR = "images"


class UnsafePathError(PipelineError, ValueError):
    """A path that would reach outside the data root (absolute, '..', or an escaping symlink)."""


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    relpath: str
    width: int
    height: int
    created: bool


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large videos do not fill memory."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _looks_absolute(text: str) -> bool:
    # Windows forms too: a registry row written on one OS must not escape on another.
    return (
        PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).is_absolute()
        or bool(PureWindowsPath(text).drive)
        or text.startswith("\\")
    )


class DataRoot:
    """A directory that paths from the registry are resolved against, never outside of."""

    def __init__(self, root: Path) -> None:
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"DataRoot({str(self.root)!r})"

    def path(self, relpath: str | Path) -> Path:
        """The absolute path of relpath inside the root; UnsafePathError if it would escape."""
        text = str(relpath)
        if "\x00" in text:
            raise UnsafePathError(f"path contains a NUL byte: {text!r}")
        if _looks_absolute(text):
            raise UnsafePathError(f"absolute paths are not allowed here: {text!r}")
        parts = PureWindowsPath(text).parts  # splits on both "/" and "\\"
        if ".." in parts:
            raise UnsafePathError(f"'..' is not allowed in a data path: {text!r}")
        resolved = (self.root / Path(*parts)).resolve() if parts else self.root
        if not resolved.is_relative_to(self.root):
            raise UnsafePathError(f"path leaves the data root (through a symlink?): {text!r}")
        return resolved

    def relative(self, path: Path) -> str:
        """The posix path of `path` relative to the root; relative input is taken as in-root."""
        path = Path(path)
        resolved = path.resolve() if path.is_absolute() else self.path(path)
        if not resolved.is_relative_to(self.root):
            raise UnsafePathError(f"{path} is outside the data root {self.root}")
        return resolved.relative_to(self.root).as_posix()

    def dir(self, *parts: str) -> Path:
        """Join single path components under the root and create the directory."""
        for part in parts:
            if (
                not isinstance(part, str)
                or part in ("", ".", "..")
                or any(bad in part for bad in ("/", "\\", "\x00"))
            ):
                raise UnsafePathError(f"not a single path component: {part!r}")
        directory = self.path("/".join(parts)) if parts else self.root
        directory.mkdir(parents=True, exist_ok=True)
        # mkdir followed any symlink created in between; check where we really are.
        if not directory.resolve().is_relative_to(self.root):
            raise UnsafePathError(f"directory leaves the data root: {'/'.join(parts)!r}")
        return directory

    def write_bytes_atomic(self, relpath: str | Path, data: bytes) -> Path:
        target = self.path(relpath)
        if target == self.root or target.is_dir():
            raise UnsafePathError(f"not a file path: {str(relpath)!r}")
        atomic_write_bytes(target, data)
        return target

    def write_text_atomic(self, relpath: str | Path, text: str) -> Path:
        return self.write_bytes_atomic(relpath, text.encode("utf-8"))

    def put_image(self, image: Image.Image) -> StoredImage:
        """Store the image's RGB pixels as a PNG named by its sha256; idempotent."""
        data = encode_png(image)
        sha = hashlib.sha256(data).hexdigest()
        relpath = f"{IMAGES_DIR}/{sha[:2]}/{sha}.png"
        target = self.path(relpath)
        width, height = image.size
        # A file of the wrong size is a leftover of a crash mid-write; replace it.
        if target.is_file() and target.stat().st_size == len(data):
            return StoredImage(sha, relpath, width, height, created=False)
        atomic_write_bytes(target, data)
        return StoredImage(sha, relpath, width, height, created=True)
