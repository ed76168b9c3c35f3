"""The built-in trainer's experiment log beside the LoRA (the kohya backend's is tested with its
stub): config, dataset hash, versions and every step's loss; and a session id of its own."""

from __future__ import annotations

import json
from pathlib import Path

from lora_pipeline.training.backends import run_job
from lora_pipeline.training.experiment import experiment_log_path
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.kohya_format import package_version
from lora_pipeline.training.trainer import TrainingConfig, TrainingExample
from lora_pipeline_tests.training.test_kohya_backend import Recorder


def test_a_builtin_training_writes_its_experiment_log(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    config = TrainingConfig(
        base_model=str(tiny_sd), max_steps=2, rank=4, alpha=4.0, device="cpu",
        dataset_hash="d" * 64, resolution=64, batch_size=2,
    )  # fmt: skip
    runs = [
        run_job(TrainingJob(config, examples, tmp_path / f"lora{i}.safetensors"), Recorder())
        for i in range(2)
    ]
    log = json.loads(experiment_log_path(runs[0].path).read_text())
    assert experiment_log_path(runs[0].path).name == "lora0.experiment.json"
    assert log["backend"] == "builtin" and log["dataset_hash"] == "d" * 64
    assert log["versions"]["lora_pipeline"] == package_version()
    assert {"torch", "diffusers", "peft"} <= set(log["versions"])
    assert log["config"]["rank"] == 4 and log["steps"] == 2
    assert [step for step, _ in log["losses"]] == [1, 2]
    assert all(isinstance(loss, float) for _, loss in log["losses"])
    assert log["session_id"] == runs[0].metadata["ss_session_id"]
    # two runs of the same config are two sessions, as kohya counts them
    assert runs[0].metadata["ss_session_id"] != runs[1].metadata["ss_session_id"]
