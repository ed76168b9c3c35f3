"""A training job: everything the training process needs, as plain JSON, and how it reports.

The Dagster asset builds a `TrainingJob` and hands it to a child process (`pipes_entry`), which
runs it (`backends.run_job`) with the built-in trainer or kohya sd-scripts and reports through a
`TrainingReporter`. Keeping the job plain data is what lets the child be a separate process
that a crash, an out-of-memory kill or a cancel can end without touching the run worker. This
module imports neither backend, so that both can import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lora_pipeline.gpu_lock import GpuLock
from lora_pipeline.training.data import TrainingExample
from lora_pipeline.training.errors import TrainingError
from lora_pipeline.training.options import BACKENDS, TrainingConfig
from lora_pipeline.training.reports import EpochReport, TrainingProgress

# Log a progress line at most this often, and at least every this many steps of a run's total.
PROGRESS_LOG_SECONDS = 10.0
PROGRESS_LOG_LINES = 20


@dataclass(frozen=True)
class GpuYield:
    """When a built-in training gives the GPU to interactive work: the device's lock (whose
    waiters it watches) and the shortest time it runs before it may pause."""

    lock_dir: str
    device: str
    min_run_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return {"lock_dir": self.lock_dir, "device": self.device, "min_run_s": self.min_run_s}


class YieldWatch:
    """Asked at every step boundary: True once the job has run `min_run_s` and an interactive
    job waits for the GPU (looked up at most every `CHECK_S`, a directory listing)."""

    CHECK_S = 0.5

    def __init__(self, policy: GpuYield) -> None:
        self._lock = GpuLock(Path(policy.lock_dir), policy.device)
        self._min_run_s = policy.min_run_s
        self._started = time.monotonic()
        self._checked = 0.0
        self.waiting = 0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._started < self._min_run_s or now - self._checked < self.CHECK_S:
            return False
        self._checked = now
        self.waiting = self._lock.interactive_waiting()
        return self.waiting > 0


@dataclass
class TrainingJob:
    config: TrainingConfig
    examples: list[TrainingExample]
    output_file: Path
    backend: str = "builtin"
    # The kohya backend: the sd-scripts checkout, its Python, the kohya-layout dataset folder,
    # the CLIP tokenizer folder (kohya's --tokenizer_cache_dir) and its working folder.
    kohya_dir: str | None = None
    kohya_python: str | None = None
    dataset_dir: str | None = None
    tokenizer_dir: str | None = None
    work_dir: str | None = None
    # The release whose LoRA `config.init_lora` is (a retrain after a failed gate): the new
    # release is registered as its child.
    parent_release_id: int | None = None
    # Set: the built-in trainer pauses for interactive GPU work (see GpuYield).
    gpu_yield: GpuYield | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise TrainingError(f"unknown training backend {self.backend!r}: use one of {BACKENDS}")
        if self.backend == "kohya" and not (self.kohya_dir and self.dataset_dir and self.work_dir):
            raise TrainingError("the kohya backend needs kohya_dir, dataset_dir and work_dir")

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "examples": [[str(e.image_path), e.caption] for e in self.examples],
            "output_file": str(self.output_file),
            "backend": self.backend,
            "kohya_dir": self.kohya_dir,
            "kohya_python": self.kohya_python,
            "dataset_dir": self.dataset_dir,
            "tokenizer_dir": self.tokenizer_dir,
            "work_dir": self.work_dir,
            "parent_release_id": self.parent_release_id,
            "gpu_yield": self.gpu_yield.to_dict() if self.gpu_yield else None,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingJob:
        try:
            return cls(
                config=TrainingConfig.from_dict(values["config"]),
                examples=[TrainingExample(Path(p), str(c)) for p, c in values["examples"]],
                output_file=Path(values["output_file"]),
                backend=values.get("backend", "builtin"),
                kohya_dir=values.get("kohya_dir"),
                kohya_python=values.get("kohya_python"),
                dataset_dir=values.get("dataset_dir"),
                tokenizer_dir=values.get("tokenizer_dir"),
                work_dir=values.get("work_dir"),
                parent_release_id=values.get("parent_release_id"),
                gpu_yield=GpuYield(**values["gpu_yield"]) if values.get("gpu_yield") else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, TrainingError):
                raise
            raise TrainingError(f"not a training job: {error!r}") from error


class TrainingReporter(Protocol):
    """Where a running job reports: the Pipes channel in the child, anything in tests."""

    def log(self, message: str, level: str = "info") -> None: ...

    def progress(self, progress: TrainingProgress) -> None: ...

    def epoch(self, report: EpochReport) -> None: ...

    def should_stop(self) -> bool: ...


def progress_line(progress: TrainingProgress, epochs: int | None = None) -> str:
    epoch = f"{progress.epoch}/{epochs}" if epochs else str(progress.epoch)
    return (
        f"step {progress.step}/{progress.total_steps} epoch {epoch} loss {progress.loss:.4f} "
        f"lr {progress.lr:.2e} {progress.it_per_s:.2f} it/s eta {_duration(progress.eta_s)}"
    )


def _duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressThrottle:
    """Decides which progress updates become log lines: the first, the last, ~20 per run, and
    at least one every 10 s, so a long run's log stays readable."""

    def __init__(self) -> None:
        self._last_logged = 0.0

    def due(self, progress: TrainingProgress) -> bool:
        every = max(1, progress.total_steps // PROGRESS_LOG_LINES)
        now = time.monotonic()
        due = (
            progress.step in (1, progress.total_steps)
            or progress.step % every == 0
            or now - self._last_logged >= PROGRESS_LOG_SECONDS
        )
        if due:
            self._last_logged = now
        return due
