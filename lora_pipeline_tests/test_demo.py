"""`lora-pipeline demo` from an empty home: all eight assets for the demo character, and a
release that passes the demo's identity gate (what the LoRA learnt: the base model alone
scores below it, see lora_pipeline_tests/toy_world)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from lora_pipeline.definitions import ASSETS as DEFINED_ASSETS
from lora_pipeline.defs.instance import open_instance
from lora_pipeline.toy_world.probe import GATE_MIN_IDENTITY

pytestmark = pytest.mark.slow

ASSETS = [asset.key.to_user_string() for asset in DEFINED_ASSETS]


def _demo(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_PIPELINE_")}
    env.update(LORA_PIPELINE_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"))
    return subprocess.run(
        [sys.executable, "-m", "lora_pipeline.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _approved(stdout: str) -> int:
    match = re.search(r"approved (\d+) images of aiko", stdout)
    assert match, stdout
    return int(match.group(1))


def test_demo_materialises_the_whole_graph_and_can_run_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _demo(home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "LoRA release 1 (candidate)" in first.stdout
    assert "Traceback" not in first.stderr
    with open_instance(home / "dagster_home") as instance:
        assert isinstance(instance, DagsterInstance)
        for name in ASSETS:
            assert "aiko" in instance.get_materialized_partitions(AssetKey(name)), name
    grids = list((home / "data" / "evals" / "aiko").glob("*/*/grid.png"))
    assert len(grids) == 1
    # The gate measured her identity and the LoRA reached the threshold.
    assert "gate pass" in first.stdout
    scores = json.loads((grids[0].parent / "eval.json").read_text())["scores"]
    assert scores["identity"] >= GATE_MIN_IDENTITY, scores

    # The second time there is nothing new to review; the same dataset version is trained again.
    second = _demo(home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _approved(second.stdout) == _approved(first.stdout) >= 10
    assert "LoRA release 2 (candidate)" in second.stdout
