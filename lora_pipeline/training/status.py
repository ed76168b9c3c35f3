"""A running training's state as one small JSON file in the data root, for whoever shows it
without Dagster (the review app): step/total, loss, ETA, the latest sample, and its pauses.

`<data root>/status/<character>/training.json`, one per character (at most one training of a
character runs at a time). The training child writes its progress; the run worker writes the
pauses, while no child runs. Each write replaces the file atomically, so a reader never sees
half of one.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.files import atomic_write_text

STATUS_DIR = "status"
# Progress is written at most this often: a step can take milliseconds on a small model.
WRITE_INTERVAL_S = 1.0


def status_path(data_root: Path, slug: str) -> Path:
    return Path(data_root) / STATUS_DIR / slug / "training.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def update_status(path: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into the file (made with its folder when missing)."""
    path = Path(path)
    current = read_status(path) or {}
    current.update(changes, updated_at=now_iso())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(current, default=str))
    return current


class StatusWriter:
    """The child's writer: progress throttled to one write a second, epochs always."""

    def __init__(self, path: Path | None) -> None:
        self._path = Path(path) if path else None
        self._last = 0.0

    def progress(self, **values: Any) -> None:
        if self._path is None or time.monotonic() - self._last < WRITE_INTERVAL_S:
            return
        self._write(state="running", **values)

    def write(self, **values: Any) -> None:
        if self._path is not None:
            self._write(**values)

    def _write(self, **values: Any) -> None:
        self._last = time.monotonic()
        # A full disk must not stop a training for the sake of a progress display.
        with contextlib.suppress(OSError):
            update_status(self._path, **values)
