"""Fixtures of the Dagster-layer tests: the real daemon (`lora-pipeline ui`) on a fresh home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from lora_pipeline.cli import main
from lora_pipeline_tests.defs.test_dagster_dev import _free_port, _wait_for_server_info

REPO = Path(__file__).resolve().parents[2]
# A run starts a process that loads the code location and the model: allow for a slow machine.
DEADLINE_S = 480
Found = TypeVar("Found")


@pytest.fixture
def daemon_settings() -> dict[str, str]:
    """Settings (environment variables) the daemon starts with; a test module may override."""
    return {}


def cli(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def wait_for(what: str, probe: Callable[[], Found | None], proc: subprocess.Popen) -> Found:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lora-pipeline ui exited with {proc.returncode} while waiting for {what}")
        found = probe()
        if found:
            return found
        time.sleep(2)
    pytest.fail(f"the daemon did not bring {what} within {DEADLINE_S} s")


@pytest.fixture
def daemon(
    project_home: Path, tmp_path: Path, monkeypatch, daemon_settings: dict[str, str]
) -> Iterator[subprocess.Popen]:
    """`lora-pipeline ui` (webserver and daemon) on a home with project demo / character aiko.
    The waits on it are deadlines for its sensors and runs, not timed assertions."""
    monkeypatch.setenv("LORA_PIPELINE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    for name, value in daemon_settings.items():
        monkeypatch.setenv(name, value)
    cli("init")
    cli("project", "add", "demo")
    cli(
        "character", "add", "aiko", "--project", "demo", "--design-prompt", "teal hair",
        "--steps", "2", "--width", "64", "--height", "64", "--seed", "7",
    )  # fmt: skip
    port = _free_port()
    log = (tmp_path / "ui.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_pipeline.cli", "ui", "--port", str(port)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_server_info(f"http://127.0.0.1:{port}/server_info", proc, 180)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
