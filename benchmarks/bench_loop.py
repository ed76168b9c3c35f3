"""The feedback loop as a reviewer waits for it: from a rejection to its regenerated pending
image under the real daemon (`lora-pipeline ui`: the rejection sensor's tick, the run's
process start, the model load, the drawing), the median of three rejections while a training
runs against three with the GPU idle, in one run; beside them the bare generation of one image
in this process, and the training's time with its yields against the same training alone.

The rejection sensor ticks every 10 s, so an idle wait is mostly the tick and the run's
start-up, not drawing; a busy one adds the training's way to its next step boundary.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median

import httpx
from dagster import DagsterEventType

from benchmarks.run import Result
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest
from lora_pipeline.tiny_models import build_tiny_sd

REJECTIONS = 3
DEADLINE_S = 600
# Long enough on 2 CPU cores (about 12 steps/s) for three rejections to come while it runs.
TRAINING_STEPS = 1500
DONE = ("success", "failure", "canceled")
REPO = Path(__file__).resolve().parents[1]


def _cli(env: dict[str, str], *argv: str) -> str:
    command = [sys.executable, "-m", "lora_pipeline.cli", *argv]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, probe, deadline_s: float = DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"no {what} within {deadline_s} s")


def _server_up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _newest_image(registry_url: str) -> int:
    """The newest pending image's id (0: none yet)."""
    from lora_pipeline.registry import queries
    from lora_pipeline.registry.db import Registry

    registry = Registry(registry_url)
    try:
        with registry.session(readonly=True) as session:
            pending = queries.pending_images(session, character_slug="aiko")
            return max((i.id for i in pending), default=0)
    finally:
        registry.dispose()


def _bare_generation_s(tiny: Path) -> float:
    generator = DiffusersGenerator(str(tiny), device="auto")
    request = GenerationRequest(prompt="aiko, teal hair", steps=2, width=64, height=64)
    generator.generate(request)  # loaded once, as the daemon's run loads it once
    times = []
    for seed in range(REJECTIONS):
        start = time.perf_counter()
        generator.generate(replace(request, seed=seed))
        times.append(time.perf_counter() - start)
    return median(times)


def _run_id(output: str) -> str:
    return output.split("queued as run ")[1].split(":")[0]


class Studio:
    """A fresh home with project demo / character aiko, and `lora-pipeline ui` on it."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.tiny = build_tiny_sd(tmp / "tiny-sd")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_PIPELINE_")}
        self.env.update(
            LORA_PIPELINE_HOME=str(self.home),
            LORA_PIPELINE_BASE_MODEL=str(self.tiny),
            LORA_PIPELINE_GPU_LOCK_DIR=str(tmp / "locks"),
            # Trainings only by hand; yield at once.
            LORA_PIPELINE_TRAINING_SETTLE_S="86400",
            LORA_PIPELINE_TRAINING_MIN_RUN_S="0",
            DAGSTER_HOME=str(self.home / "dagster_home"),
        )
        self.registry_url = f"sqlite:///{self.home / 'registry.db'}"
        self.cli("init")
        self.cli("project", "add", "demo")
        self.cli("character", "add", "aiko", "--project", "demo", "--design-prompt",
                 "teal hair", "--steps", "2", "--width", "64", "--height", "64")  # fmt: skip
        self.port = _free_port()
        self.ui = subprocess.Popen(
            [sys.executable, "-m", "lora_pipeline.cli", "ui", "--port", str(self.port)],
            env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        _wait("Dagster UI", lambda: _server_up(f"http://127.0.0.1:{self.port}/server_info"))

    def cli(self, *argv: str) -> str:
        return _cli(self.env, *argv)

    def stop(self) -> None:
        os.killpg(self.ui.pid, signal.SIGINT)
        self.ui.wait(timeout=60)

    def newest(self) -> int:
        return _newest_image(self.registry_url)

    def reject_and_wait(self, image_id: int) -> tuple[int, float]:
        """Reject the image; (the regenerated image, seconds until it was pending)."""
        start = time.perf_counter()
        self.cli("review", "reject", str(image_id), "--category", "bad-quality")
        new = _wait("regenerated image", lambda: (n := self.newest()) > image_id and n or None)
        return new, time.perf_counter() - start

    def rejections(self, image_id: int) -> tuple[int, list[float]]:
        waits = []
        for _ in range(REJECTIONS):
            image_id, waited = self.reject_and_wait(image_id)
            waits.append(waited)
        return image_id, waits

    def run_state(self, run_id: str) -> dict:
        listed = json.loads(self.cli("runs", "--json", "--character", "aiko"))
        return next(r for r in listed if r["run_id"] == run_id)

    def train(self) -> str:
        output = self.cli("train", "aiko", "--max-steps", str(TRAINING_STEPS), "--epochs",
                          "1000", "--no-samples")  # fmt: skip
        run_id = _run_id(output)
        _wait("the training's first epoch", lambda: self.run_state(run_id)["progress"])
        return run_id

    def training_s(self, run_id: str) -> tuple[float, dict]:
        """The trained_lora step's duration and its materialisation metadata, once done."""
        done = lambda: self.run_state(run_id)["status"] in DONE or None  # noqa: E731
        _wait("the training's end", done, deadline_s=3 * DEADLINE_S)
        from dagster import DagsterInstance

        os.environ["DAGSTER_HOME"] = self.env["DAGSTER_HOME"]
        with DagsterInstance.get() as instance:
            (step,) = [
                s for s in instance.get_run_step_stats(run_id) if s.step_key == "trained_lora"
            ]
            records = instance.get_records_for_run(
                run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            ).records
        materialised = [
            r.event_log_entry.dagster_event.event_specific_data.materialization for r in records
        ]
        (lora,) = [m for m in materialised if m.asset_key.to_user_string() == "trained_lora"]
        return step.end_time - step.start_time, {k: v.value for k, v in lora.metadata.items()}


def run() -> Result:
    # The daemon may still be writing its history as it stops: cleaning up must not fail.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        studio = Studio(Path(tmp))
        try:
            studio.cli("generate", "aiko", "--count", "11")
            _wait("11 images", lambda: studio.newest() >= 11 or None)
            studio.cli("review", "approve", *map(str, range(1, 11)))
            newest, idle = studio.rejections(11)
            run_id = studio.train()
            newest, busy = studio.rejections(newest)
            yielding_s, metadata = studio.training_s(run_id)
            alone_s, _ = studio.training_s(studio.train())
        finally:
            studio.stop()
        bare = _bare_generation_s(studio.tiny)
    return Result(
        name="rejection → regenerated pending image under the daemon, a training running vs idle",
        measured_s=median(busy),
        baseline_s=median(idle),
        baseline="the same with the GPU idle",
        figures={
            "rejections_each": REJECTIONS,
            "idle_waits_s": ", ".join(f"{w:.1f}" for w in idle),
            "busy_waits_s": ", ".join(f"{w:.1f}" for w in busy),
            "bare_generation_of_one_image_s": round(bare, 3),
            "rejection_sensor_interval_s": 10,
            "training_steps": TRAINING_STEPS,
            "training_with_yields_s": round(yielding_s, 1),
            "training_pauses": metadata.get("gpu_pauses", 0),
            "training_paused_s": metadata.get("paused_s", 0),
            "training_uninterrupted_s": round(alone_s, 1),
        },
    )
