"""Which sources a live process is ingesting: an operating-system lock per source.

A process ingesting a source holds `fcntl.flock` on `<data root>/locks/ingest/source-<id>.lock`
for as long as it works on it. The kernel drops the lock of a process that dies (an exception
that escaped, kill -9, the OOM killer), so a `running` source whose lock anyone can take has no
one working on it any more: the stuck-job schedule marks it failed. Two runs given the same
source never ingest it at once either.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lora_pipeline.media.store import DataRoot

LOCK_DIR = ("locks", "ingest")


def _lock_path(root: DataRoot, source_id: int) -> Path:
    return root.dir(*LOCK_DIR) / f"source-{int(source_id)}.lock"


@contextlib.contextmanager
def claim_source(root: DataRoot, source_id: int) -> Iterator[bool]:
    """Hold the source's lock for the block; yields False (holding nothing) when another live
    process holds it."""
    fd = os.open(_lock_path(root, source_id), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def is_claimed(root: DataRoot, source_id: int) -> bool:
    """Whether a live process holds the source's lock now."""
    with claim_source(root, source_id) as claimed:
        return not claimed
