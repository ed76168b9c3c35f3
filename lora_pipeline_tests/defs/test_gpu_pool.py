"""Two GPU steps in two processes never overlap on an instance set up by the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lora_pipeline.defs.instance import open_instance, prepare_dagster_home

REPO = Path(__file__).resolve().parents[2]


def _run_two_probes(dagster_home: Path, probe_dir: Path) -> dict[str, dict]:
    probe_dir.mkdir()
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), POOL_PROBE_DIR=str(probe_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lora_pipeline_tests.defs.pool_probe", name],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]
    return {n: json.loads((probe_dir / f"end-{n}.json").read_text()) for n in ("a", "b")}


def _overlap(records: dict[str, dict]) -> bool:
    a, b = records["a"], records["b"]
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_gpu_runs_never_overlap_across_processes(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    prepare_dagster_home(home)
    with open_instance(home) as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    records = _run_two_probes(home, tmp_path / "probe")
    assert not _overlap(records), records
    assert records["a"]["saw_running"] == [] and records["b"]["saw_running"] == []


def test_without_the_pool_limit_the_probes_do_overlap(tmp_path: Path) -> None:
    """The control: the same probes on an instance with no pool limit run at once, so the test
    above would fail if the project stopped limiting the pool."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config.pop("concurrency")
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # Create the instance's storage here: two processes creating it at once race on its
    # tables ("table secondary_indexes already exists").
    with open_instance(home):
        pass
    records = _run_two_probes(home, tmp_path / "probe")
    assert _overlap(records), records
