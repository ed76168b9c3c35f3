"""Two GPU steps in two processes never overlap: on an instance set up by the project (pool
limit and lock), and on any instance through the lock alone, whether the steps run in run
workers or in in-process `materialize()` calls. The control shows the same probes do overlap
without either, so the tests can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lora_pipeline.defs.instance import open_instance, prepare_dagster_home

REPO = Path(__file__).resolve().parents[2]


def _start_two_probes(
    dagster_home: Path, tmp_path: Path, modes: tuple[str, str], lock: bool, rounds: int
) -> Path:
    """Run the two probe processes to their end; the folder where they wrote their records."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), POOL_PROBE_DIR=str(probe_dir))
    env.update(LORA_PIPELINE_GPU_LOCK_DIR=str(tmp_path / "locks"), POOL_PROBE_LOCK=str(int(lock)))
    env["LORA_PIPELINE_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lora_pipeline_tests.defs.pool_probe", name, mode, str(rounds)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, mode in zip(("a", "b"), modes, strict=True)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:] + _diagnostics(probe_dir)
    return probe_dir


def _diagnostics(probe_dir: Path) -> str:
    """What a stalled round's probes wrote down about the pool and the lock."""
    return "".join(f"\n{p}: {p.read_text()}" for p in sorted(probe_dir.glob("*/diagnostics-*")))


def _records(folder: Path) -> dict[str, dict]:
    return {n: json.loads((folder / f"end-{n}.json").read_text()) for n in ("a", "b")}


def _run_two_probes(
    dagster_home: Path, tmp_path: Path, modes: tuple[str, str], lock: bool = True
) -> dict[str, dict]:
    return _records(_start_two_probes(dagster_home, tmp_path, modes, lock, rounds=1))


def _run_rounds(home: Path, tmp_path: Path, lock: bool) -> list[dict[str, dict]]:
    probe_dir = _start_two_probes(home, tmp_path, ("job", "job"), lock, rounds=ROUNDS)
    return [_records(probe_dir / f"round-{number}") for number in range(ROUNDS)]


def _overlap(records: dict[str, dict]) -> bool:
    a, b = records["a"], records["b"]
    return a["start"] < b["end"] and b["start"] < a["end"]


def _project_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    prepare_dagster_home(home)
    with open_instance(home) as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    return home


def _unlimited_home(tmp_path: Path) -> Path:
    """An instance without the pool limit."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config.pop("concurrency")
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # Create the instance's storage here: two processes creating it at once race on its
    # tables ("table secondary_indexes already exists").
    with open_instance(home):
        pass
    return home


def test_gpu_runs_never_overlap_across_processes(tmp_path: Path) -> None:
    records = _run_two_probes(_project_home(tmp_path), tmp_path, ("job", "job"))
    assert not _overlap(records), records
    assert records["a"]["saw_running"] == [] and records["b"]["saw_running"] == []


# The project's instance, 20 contests in a row: the pool and the lock never let two overlap.
ROUNDS = 20


def test_twenty_rounds_in_a_row_never_overlap(tmp_path: Path) -> None:
    rounds = _run_rounds(_project_home(tmp_path), tmp_path, lock=True)
    overlapping = [n for n, records in enumerate(rounds) if _overlap(records)]
    seen = [n for n, r in enumerate(rounds) if r["a"]["saw_running"] or r["b"]["saw_running"]]
    assert overlapping == [] and seen == [], rounds


def test_twenty_rounds_overlap_without_the_pool_limit_and_the_lock(tmp_path: Path) -> None:
    """The control of the rounds: the same contests on an instance without either mostly
    overlap, so a round above that did not is one the pool and the lock kept apart."""
    rounds = _run_rounds(_unlimited_home(tmp_path), tmp_path, lock=False)
    overlapping = [n for n, records in enumerate(rounds) if _overlap(records)]
    assert len(overlapping) >= ROUNDS // 2, rounds


# Two run workers, a run worker beside an in-process `materialize()`, two materialisations.
PATHS = [("job", "job"), ("job", "materialize"), ("materialize", "materialize")]


@pytest.mark.parametrize("modes", PATHS)
def test_the_lock_alone_keeps_any_two_paths_apart(tmp_path: Path, modes) -> None:
    """On an instance without any pool limit: what keeps GPU steps apart is the lock."""
    records = _run_two_probes(_unlimited_home(tmp_path), tmp_path, modes)
    assert not _overlap(records), records
    assert records["a"]["saw_running"] == [] and records["b"]["saw_running"] == []


def test_without_the_pool_limit_and_the_lock_the_probes_do_overlap(tmp_path: Path) -> None:
    """The control of the tests above: the same probes, neither pool limit nor lock."""
    home = _unlimited_home(tmp_path)
    records = _run_two_probes(home, tmp_path, ("job", "materialize"), lock=False)
    assert _overlap(records), records
