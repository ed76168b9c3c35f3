"""Publishing files atomically: a reader sees the old file or the whole new one, never half.

Every writer that publishes a file (images, LoRAs, manifests, settings, grids) goes through
here: the data goes to a temporary file with a unique name in the target's folder (so two
writers never share one), is flushed to disk, and is renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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
