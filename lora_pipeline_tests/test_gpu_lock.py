"""The GPU lock: one holder per device across processes, released by the kernel when its holder
dies, interactive waiters served before batch ones, and a waiter told who holds the GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lora_pipeline.gpu_lock import GpuLock, device_key

# A process that waits until every named process is ready, takes the lock (or, for the control,
# does not), records when it held it and whether another process held it at the same time.
HOLDER = textwrap.dedent(
    """
    import contextlib, json, sys, time
    from pathlib import Path
    from lora_pipeline.gpu_lock import GpuLock
    folder, name, priority, hold_s, peers, mode = sys.argv[1:7]
    folder, hold_s, peers = Path(folder), float(hold_s), peers.split(",")
    (folder / f"ready-{name}").touch()
    while not all((folder / f"ready-{p}").exists() for p in peers):
        time.sleep(0.01)
    log = lambda line: print(line, flush=True)
    held = GpuLock(folder).hold(name, priority, log=log)
    with held if mode == "lock" else contextlib.nullcontext():
        start = time.time()
        (folder / f"holding-{name}").touch()
        saw = []
        while time.time() - start < hold_s:
            saw = saw or [p for p in peers if p != name and (folder / f"holding-{p}").exists()]
            time.sleep(0.01)
        (folder / f"holding-{name}").unlink()
        end = time.time()
    record = {"start": start, "end": end, "saw": saw}
    (folder / f"record-{name}.json").write_text(json.dumps(record))
    """
)


def _start(
    folder: Path,
    name: str,
    priority: str = "batch",
    hold_s: float = 0.3,
    peers: str = "",
    mode: str = "lock",
) -> subprocess.Popen[str]:
    arguments = [str(folder), name, priority, str(hold_s), peers or name, mode]
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_pair(folder: Path, mode: str) -> dict[str, dict]:
    procs = [_start(folder, name, peers="a,b", mode=mode) for name in ("a", "b")]
    for proc in procs:
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
    return _records(folder, ["a", "b"])


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _records(folder: Path, names: list[str]) -> dict[str, dict]:
    return {n: json.loads((folder / f"record-{n}.json").read_text()) for n in names}


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.parametrize("round_", range(20))
def test_two_processes_never_hold_the_gpu_at_once(tmp_path: Path, round_: int) -> None:
    records = _run_pair(tmp_path, "lock")
    assert not _overlap(records["a"], records["b"]), records
    assert records["a"]["saw"] == [] and records["b"]["saw"] == []


def test_without_the_lock_the_same_processes_do_overlap(tmp_path: Path) -> None:
    """The control: the test above would fail if holding the lock did not exclude."""
    records = _run_pair(tmp_path, "none")
    assert _overlap(records["a"], records["b"]), records
    assert records["a"]["saw"] == ["b"] and records["b"]["saw"] == ["a"]


def test_a_killed_holder_releases_the_gpu(tmp_path: Path) -> None:
    holder = _start(tmp_path, "doomed", hold_s=600)
    _wait_for(tmp_path / "holding-doomed")
    waiter = _start(tmp_path, "next")
    time.sleep(0.5)
    assert not (tmp_path / "holding-next").exists()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    output, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0
    assert "waiting for the GPU, held by doomed" in output


def test_interactive_work_goes_before_batch_work(tmp_path: Path) -> None:
    training = _start(tmp_path, "training", "batch", hold_s=1.5)
    _wait_for(tmp_path / "holding-training")
    evaluation = _start(tmp_path, "evaluation", "batch")
    time.sleep(0.3)  # the batch waiter is first in line...
    regeneration = _start(tmp_path, "regeneration", "interactive")
    for proc in (training, evaluation, regeneration):
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
    records = _records(tmp_path, ["training", "evaluation", "regeneration"])
    # ...but the interactive one gets the GPU when the training lets it go.
    assert records["regeneration"]["start"] < records["evaluation"]["start"], records


def test_a_holder_sees_interactive_waiters_and_dead_ones_are_forgotten(tmp_path: Path) -> None:
    lock = GpuLock(tmp_path)
    with lock.hold("training", "batch") as lease:
        assert lease.interactive_waiting() == 0
        waiter = _start(tmp_path, "regeneration", "interactive")
        deadline = time.monotonic() + 30
        while lease.interactive_waiting() == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert lock.current_holder().holder == "training"
        os.kill(waiter.pid, signal.SIGKILL)
        waiter.wait(timeout=10)
        assert lease.interactive_waiting() == 0
    assert lock.current_holder() is None


def test_the_lock_is_per_device(tmp_path: Path) -> None:
    assert device_key("cuda") == device_key("cuda:0") == "cuda-0"
    assert device_key("cuda:1") == "cuda-1" and device_key("cpu") == "cpu"
    held = threading.Event()
    with GpuLock(tmp_path, "cuda:0").hold("a"):

        def other_device() -> None:
            with GpuLock(tmp_path, "cuda:1").hold("b"):
                held.set()

        thread = threading.Thread(target=other_device)
        thread.start()
        thread.join(timeout=10)
    assert held.is_set()


def test_an_unknown_priority_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="priority must be one of"), GpuLock(tmp_path).hold(
        "x", "urgent"  # type: ignore[arg-type]
    ):
        pass
