"""`lora-pipeline doctor`: one line per check, a non-zero exit when one fails; `worker` refuses
a GPU queue with more than one step at a time."""

from __future__ import annotations

import pytest

from lora_pipeline.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return tmp_path / "home"


def test_doctor_passes_on_an_initialised_home(home, capsys) -> None:
    assert main(["init"]) == 0
    capsys.readouterr()
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[1] for line in lines]
    assert names == ["registry", "dagster", "data", "lora", "disk"], lines
    assert all(line.startswith("ok ") for line in lines), lines


def test_doctor_fails_one_line_per_check(home, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LORA_PIPELINE_EXECUTOR", "celery")
    # Nothing listens on port 1: the broker check fails, and the workers' with it.
    monkeypatch.setenv("LORA_PIPELINE_BROKER_URL", "pyamqp://guest@127.0.0.1:1//")
    assert main(["doctor"]) == 2
    captured = capsys.readouterr()
    lines = {line.split(maxsplit=2)[1]: line for line in captured.out.splitlines()}
    assert lines["registry"].startswith("FAIL") and "lora-pipeline init" in lines["registry"]
    assert lines["dagster"].startswith("FAIL")
    assert lines["broker"].startswith("FAIL") and "127.0.0.1:1" in lines["broker"]
    assert lines["workers"].startswith("FAIL")
    assert lines["gpu"].startswith("FAIL")
    assert captured.err.strip().splitlines() == ["error: 6 check(s) failed"]


def test_worker_refuses_two_steps_at_once_on_a_gpu_queue(home, capsys) -> None:
    assert main(["worker", "--queue", "gpu-host-a", "--concurrency", "2"]) == 2
    assert "runs one step at a time" in capsys.readouterr().err
