"""One GPU job at a time on a device, whoever starts it: an operating-system lock per device.

Dagster's `gpu` pool queues GPU steps and shows them waiting, but its slots are not a mutex
across processes under load, and in-process `materialize()` ignores pools. So every GPU step
holds this lock (`fcntl.flock` on `<lock dir>/gpu-<device>.lock`) for as long as it uses the
device. The kernel releases a dead process's lock, so a crash or kill -9 never leaves the GPU
held.

Interactive work (images for review, regenerations) goes first: an interactive waiter registers
itself in `gpu-<device>.waiting/` (a file it keeps locked, so a dead waiter is seen as dead),
and batch work (training, evaluation) takes the free lock only while no interactive waiter is
alive. A running batch job can ask `interactive_waiting()` to decide to yield.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from lora_pipeline.files import atomic_write_text

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")

# How often a waiter looks again, and how often it says it is still waiting.
POLL_S = 0.2
REPORT_EVERY_S = 60.0


@dataclass(frozen=True)
class Holder:
    """Who holds the GPU: a run (or a process) and since when."""

    holder: str
    pid: int
    since: str
    priority: str

    def describe(self) -> str:
        return f"{self.holder} (pid {self.pid}, {self.priority}) since {self.since}"


def device_key(device: str) -> str:
    """The lock name of a torch device: `cuda` and `cuda:0` share one lock, `cpu` has its own."""
    head, _, index = device.partition(":")
    return f"{head}-{index or 0}" if head == "cuda" else re.sub(r"[^a-z0-9-]", "-", device)


class GpuLock:
    """The lock of one device, in a folder local to this host (never on a shared mount)."""

    def __init__(self, folder: Path, device: str = "cuda") -> None:
        self.folder = Path(folder)
        key = device_key(device)
        self.path = self.folder / f"gpu-{key}.lock"
        self.holder_path = self.folder / f"gpu-{key}.holder.json"
        self.waiting_dir = self.folder / f"gpu-{key}.waiting"

    @contextlib.contextmanager
    def hold(
        self,
        holder: str,
        priority: Priority = "batch",
        log: Callable[[str], None] | None = None,
        escalate_after_s: float | None = None,
    ) -> Iterator[GpuLease]:
        """Wait for the device (interactive waiters first), hold it for the block, release it.

        A batch waiter stops deferring to interactive ones after `escalate_after_s` seconds, so
        a stream of interactive work cannot keep a training paused for ever."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            with self._waiting_as(priority):
                self._acquire(
                    handle, holder, priority, log or (lambda _line: None), escalate_after_s
                )
            self._write_holder(holder, priority)
            yield GpuLease(self, handle)
        finally:
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
            handle.close()  # closing the file releases the flock

    def current_holder(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.holder_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def interactive_waiting(self) -> int:
        """How many live interactive waiters there are (stale entries are removed)."""
        count = 0
        for entry in self.waiting_dir.glob("*.json") if self.waiting_dir.is_dir() else ():
            if _is_alive(entry):
                count += 1
        return count

    # --- internals ---

    def _acquire(
        self,
        handle: IO[str],
        holder: str,
        priority: Priority,
        log: Callable[[str], None],
        escalate_after_s: float | None,
    ) -> None:
        waited_since, reported = time.monotonic(), 0.0
        while True:
            waited = time.monotonic() - waited_since
            escalated = escalate_after_s is not None and waited >= escalate_after_s
            may_take = priority == "interactive" or escalated or self.interactive_waiting() == 0
            if may_take and _try_lock(handle):
                if reported:
                    log(f"got the GPU after {time.monotonic() - waited_since:.1f} s")
                return
            now = time.monotonic()
            if not reported or now - reported >= REPORT_EVERY_S:
                log(self._waiting_line(holder))
                reported = now
            time.sleep(POLL_S)

    def _waiting_line(self, holder: str) -> str:
        current = self.current_holder()
        if current is None:
            return f"{holder} waiting for the GPU: interactive work goes first"
        return f"{holder} waiting for the GPU, held by {current.describe()}"

    @contextlib.contextmanager
    def _waiting_as(self, priority: Priority) -> Iterator[None]:
        if priority != "interactive":
            yield
            return
        self.waiting_dir.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        staging, entry = self.waiting_dir / f".{name}", self.waiting_dir / f"{name}.json"
        with staging.open("w") as handle:
            # Locked while it waits, so a dead waiter's entry unlocks; locked before it is
            # visible under its .json name, so no one takes a new entry for a dead one.
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(json.dumps({"pid": os.getpid(), "since": _now()}))
            handle.flush()
            staging.rename(entry)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def _write_holder(self, holder: str, priority: Priority) -> None:
        record = {"holder": holder, "pid": os.getpid(), "since": _now(), "priority": priority}
        atomic_write_text(self.holder_path, json.dumps(record))


@dataclass
class GpuLease:
    """The GPU, held: the holder can ask whether interactive work waits for it."""

    lock: GpuLock
    handle: IO[str]

    def interactive_waiting(self) -> int:
        return self.lock.interactive_waiting()

    def fileno(self) -> int:
        """The locked descriptor, for a child process that must keep holding the lock."""
        return self.handle.fileno()


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_alive(entry: Path) -> bool:
    """Whether the waiter of an entry still holds it; a dead waiter's entry is removed."""
    try:
        with entry.open("r") as handle:
            if _try_lock(handle):
                # Nobody holds it: its waiter is gone (or has just finished).
                with contextlib.suppress(OSError):
                    entry.unlink()
                return False
    except FileNotFoundError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
