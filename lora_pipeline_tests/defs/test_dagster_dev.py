"""`dagster dev` boots this code location, answers /server_info and shuts down cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lora_pipeline.defs.instance import prepare_dagster_home

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server_info(url: str, proc: subprocess.Popen, deadline_s: float) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited early with {proc.returncode}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"no answer from {url} within {deadline_s} s")


def test_dagster_dev_boots_and_stops(project_home: Path) -> None:
    dagster_home = project_home / "dagster_home"
    prepare_dagster_home(dagster_home)
    port = _free_port()
    dagster = str(Path(sys.executable).with_name("dagster"))
    proc = subprocess.Popen(
        [dagster, "dev", "-m", "lora_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=dict(os.environ, DAGSTER_HOME=str(dagster_home)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        info = _wait_for_server_info(f"http://127.0.0.1:{port}/server_info", proc, 180)
        assert "dagster_webserver_version" in info
        graphql = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ assetNodes { assetKey { path } } }"},
            timeout=30,
        ).json()
        keys = {node["assetKey"]["path"][-1] for node in graphql["data"]["assetNodes"]}
        assert {"ingested_frames", "eval_grid"} <= keys
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("dagster dev did not stop within 60 s of SIGINT")
