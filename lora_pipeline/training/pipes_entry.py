"""`python -m lora_pipeline.training.pipes_entry`: the training process behind `trained_lora`.

Launched by Dagster's `PipesSubprocessClient`, it reads its `TrainingJob` from the Pipes context
(`extras["job"]`), trains, and streams back through Dagster Pipes:
- log lines (step, epoch, loss, learning rate, it/s, ETA) into the run's log;
- a custom message per epoch (`{"kind": "epoch", ...}`), which the asset turns into an
  `AssetObservation`, with the epoch's LoRA file and sample images;
- the result (`{"kind": "result", ...}`) and the asset materialization metadata at the end;
- on failure a custom message `{"kind": "failure", "message": ...}` and exit code 2; when asked
  to stop (SIGINT from Dagster on cancel, SIGTERM) it saves a resumable state after the current
  step, reports `{"kind": "interrupted", ...}` and exits with 130.

Only `dagster_pipes` (a small dependency-free package) is imported, never `dagster`. Run with
`--job job.json` it trains without Dagster and prints the same reports to stdout.

For crash drills, `LORA_PIPELINE_TRAINING_KILL_AFTER_EPOCH=N` makes the process kill itself with
SIGKILL right after epoch N was saved: a hard crash with no clean-up, as the kernel's OOM killer
would do it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lora_pipeline.config import Settings, env_name
from lora_pipeline.training.backends import run_job
from lora_pipeline.training.errors import TrainingError, TrainingInterrupted
from lora_pipeline.training.job import ProgressThrottle, TrainingJob, YieldWatch, progress_line
from lora_pipeline.training.reports import EpochReport, TrainingProgress, TrainingResult
from lora_pipeline.training.status import StatusWriter

EXIT_FAILED = 2
# EX_TEMPFAIL: the job paused for interactive GPU work; its state is saved, run it again.
EXIT_YIELDED = 75
EXIT_INTERRUPTED = 130
KILL_AFTER_EPOCH_ENV = env_name("training_kill_after_epoch")
PARENT_POLL_SECONDS = 2.0


class StopFlag:
    """Set by SIGINT/SIGTERM or the parent's death; the trainer stops after the current step.

    A second signal means "now": the process exits at once (the last saved state remains).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if self._event.is_set():
            os._exit(EXIT_INTERRUPTED)
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: self.request(signal.Signals(number).name))
        parent = os.getppid()

        def watch_parent() -> None:
            # A run worker that dies without cancelling us leaves an orphan that would hold the
            # GPU: notice the re-parenting and stop.
            while not self._event.wait(PARENT_POLL_SECONDS):
                if os.getppid() != parent:
                    self.request("the run worker is gone")
                    return

        threading.Thread(target=watch_parent, name="parent-watchdog", daemon=True).start()


class ChildReporter:
    """Reports of a running job, as Pipes messages (or stdout lines without Dagster)."""

    def __init__(
        self,
        pipes: Any | None,
        job: TrainingJob,
        stop: StopFlag,
        status_file: str | None = None,
    ) -> None:
        self._pipes = pipes
        # The review app shows step, loss, ETA and the latest sample from this file.
        self._status = StatusWriter(Path(status_file) if status_file else None)
        self._job = job
        self._stop = stop
        self._throttle = ProgressThrottle()
        self._epochs: int | None = None
        self._kill_after_epoch = Settings.current().training_kill_after_epoch
        # Only the built-in trainer resumes at any step; kohya runs to the end.
        use_yield = job.gpu_yield is not None and job.backend == "builtin"
        self._yield = YieldWatch(job.gpu_yield) if use_yield and job.gpu_yield else None
        self.yielded = False

    def log(self, message: str, level: str = "info") -> None:
        if self._pipes is None:
            print(message, flush=True)
        else:
            getattr(self._pipes.log, level if level != "warn" else "warning")(message)

    def message(self, payload: dict[str, Any]) -> None:
        if self._pipes is None:
            print(json.dumps(payload), flush=True)
        else:
            self._pipes.report_custom_message(payload)

    def progress(self, progress: TrainingProgress) -> None:
        self._status.progress(
            step=progress.step,
            total_steps=progress.total_steps,
            epoch=progress.epoch,
            epochs=self._epochs,
            loss=round(float(progress.loss), 6),
            eta_s=round(float(progress.eta_s), 1),
        )
        if self._throttle.due(progress):
            self.log(progress_line(progress, self._epochs))

    def epoch(self, report: EpochReport) -> None:
        self._epochs = report.epochs
        saved = f", saved {Path(report.lora_path).name}" if report.lora_path else ""
        self.log(
            f"epoch {report.epoch}/{report.epochs} done: mean loss {report.mean_loss:.4f}, "
            f"{report.seconds:.1f} s{saved}"
        )
        self.message({"kind": "epoch", **asdict(report)})
        sample = report.sample_paths[0] if report.sample_paths else None
        self._status.write(
            state="running",
            step=report.step,
            total_steps=report.total_steps,
            epoch=report.epoch,
            epochs=report.epochs,
            epoch_loss=round(float(report.mean_loss), 6),
            **({"sample": str(sample)} if sample else {}),
        )
        if self._kill_after_epoch == report.epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        if self._yield is not None and self._yield.due():
            self.yielded = True
        return self.yielded

    def finished(self, result: TrainingResult) -> None:
        self.message({"kind": "result", "result": result.to_dict()})
        if self._pipes is not None:
            self._pipes.report_asset_materialization(metadata=materialization_metadata(result))

    def failed(self, message: str) -> None:
        self.log(message, "error")
        self.message({"kind": "failure", "message": message})

    def interrupted(self, error: TrainingInterrupted) -> None:
        state = str(error.state_path) if error.state_path else None
        payload = {"kind": "interrupted", "step": error.step, "state": state}
        if self.yielded:
            waiting = self._yield.waiting if self._yield else 0
            self.log(f"pausing at step {error.step}: {waiting} interactive GPU job(s) waiting")
            payload |= {"reason": "yield", "waiting": waiting}
        else:
            self.log(f"{error}; the next run resumes from step {error.step}", "warning")
        self.message(payload)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def materialization_metadata(result: TrainingResult) -> dict[str, Any]:
    """What the Dagster UI shows for the trained file (raw values: Pipes infers the types)."""
    return {
        "steps": result.steps,
        "epochs": result.epochs,
        "final_loss": round(result.final_loss, 6),
        "seconds": round(result.seconds, 2),
        "resumed_from_step": result.resumed_from_step,
        "sha256": result.sha256,
        "lora_file": {"raw_value": str(result.path), "type": "path"},
        "loss_curve": {"raw_value": [round(x, 5) for x in result.losses], "type": "json"},
        "hyperparameters": {"raw_value": result.config, "type": "json"},
    }


def train(job: TrainingJob, reporter: ChildReporter) -> int:
    """Run the job; the exit code says how it ended (0, EXIT_FAILED, EXIT_INTERRUPTED)."""
    started = time.monotonic()
    reporter.log(f"training {job.output_file.name} with the {job.backend} backend")
    try:
        result = run_job(job, reporter)
    except TrainingInterrupted as error:
        reporter.interrupted(error)
        return EXIT_YIELDED if reporter.yielded else EXIT_INTERRUPTED
    except (TrainingError, OSError) as error:
        reporter.failed(str(error))
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the parent must learn why, not only an exit code
        # An error no layer turned into a TrainingError: its first line becomes the failure
        # (what the Dagster UI shows), the traceback goes to stderr (the step's log).
        traceback.print_exc()
        reporter.failed(f"{type(error).__name__}: {first_line(error)}")
        return EXIT_FAILED
    reporter.log(
        f"trained {result.steps} steps in {time.monotonic() - started:.1f} s, "
        f"final loss {result.final_loss:.4f}: {result.path}"
    )
    reporter.finished(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, help="a job JSON file, to train without Dagster")
    args = parser.parse_args(argv)
    from lora_pipeline.logging_setup import quiet_ml_libraries

    quiet_ml_libraries()
    # A training is batch work: the CPU goes to interactive work first (a regeneration's run
    # starting while this trains, the review app), as the GPU does through the lock.
    os.nice(Settings.current().training_nice)
    stop = StopFlag()
    stop.install()
    if args.job is not None:
        job = TrainingJob.from_dict(json.loads(args.job.read_text("utf-8")))
        return train(job, ChildReporter(None, job, stop))

    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        job = TrainingJob.from_dict(pipes.get_extra("job"))
        status_file = pipes.get_extra("status_file") if "status_file" in pipes.extras else None
        code = train(job, ChildReporter(pipes, job, stop, status_file))
    return code


if __name__ == "__main__":
    sys.exit(main())
