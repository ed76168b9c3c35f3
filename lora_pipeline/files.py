"""Publishing files and folders atomically: a reader sees the old one or the whole new one.

Every writer that publishes a file (images, LoRAs, manifests, settings, grids) goes through
here: the data goes to a temporary file with a unique name in the target's folder (so two
writers never share one), is flushed to disk, and is renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path | str, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside `target` to write to; on a clean exit it is fsynced and renamed
    over `target`, on an error it is removed. For writers that want a path (PIL, safetensors)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600; a published file is as readable as any other output.
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def atomic_write_bytes(target: Path | str, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `target` atomically; returns the target."""
    with atomic_path(target, mode) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path | str, text: str, mode: int = 0o644) -> Path:
    """Write `text` (UTF-8) to `target` atomically; returns the target."""
    return atomic_write_bytes(target, text.encode("utf-8"), mode)


@contextlib.contextmanager
def atomic_folder(target: Path | str, *, replace: bool = True) -> Iterator[Path]:
    """A scratch folder beside `target` to fill; on a clean exit it becomes `target` in one
    rename, on an error it is removed (a crash leaves the old folder, never half a new one).

    `replace=True`: an existing `target` is moved aside, swapped out and then removed (a folder
    cannot replace a non-empty folder in one call). `replace=False`: the first writer wins; when
    another writer published a non-empty `target` first, the scratch folder is dropped and
    theirs is kept (callers that must agree with it check it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield scratch
        os.chmod(scratch, 0o755)  # mkdtemp creates 0700
        if replace:
            _swap_in(scratch, target)
        else:
            _publish_once(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _swap_in(scratch: Path, target: Path) -> None:
    if not target.exists():
        os.replace(scratch, target)
        return
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    os.replace(target, retired)
    try:
        os.replace(scratch, target)
    except OSError:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _publish_once(scratch: Path, target: Path) -> None:
    with contextlib.suppress(OSError):
        target.rmdir()  # an empty folder is no published one
    try:
        os.replace(scratch, target)
    except OSError:
        # Another writer published first (a non-empty target cannot be replaced).
        if not target.is_dir():
            raise
