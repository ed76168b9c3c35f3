"""The training files beside a split: dataset.toml, kohya/training configs, train.sh."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from lora_pipeline.dataset.kohya_files import (
    Subset,
    TrainingPlan,
    dataset_toml,
    kohya_config,
    training_config,
    write_training_files,
)

VERSION = "ab" * 32


def plan(
    person: str = "Aiko", base_model: str | None = "/models/tiny sd", version: str = "sd15"
) -> TrainingPlan:
    return TrainingPlan(
        person=person,
        character="aiko",
        trigger_word="aiko",
        version_hash=VERSION,
        folder_name=VERSION,
        base_model=base_model,
        base_model_version=version,
        subsets=(
            Subset("close", "close", 12, 2, "headshot", 2),
            Subset("mid", "mid", 20, 1, "portrait", 2),
            Subset("far", "far", 8, 2, "full body", 2),
            Subset("unknown", "unknown", 3, 1, None, 1),
        ),
    )


def test_dataset_toml_is_valid_kohya_config() -> None:
    config = tomllib.loads(dataset_toml(plan()))
    assert config["general"] == {
        "caption_extension": ".txt",
        "shuffle_caption": True,
        "enable_bucket": True,
        "bucket_reso_steps": 64,
        "min_bucket_reso": 256,
        "max_bucket_reso": 1024,
    }
    (dataset,) = config["datasets"]
    # 43 images: 15 epochs, batch 2 (smart defaults).
    assert dataset["resolution"] == 512 and dataset["batch_size"] == 2
    assert dataset["subsets"] == [
        {"image_dir": "close", "num_repeats": 2, "keep_tokens": 2},
        {"image_dir": "mid", "num_repeats": 1, "keep_tokens": 2},
        {"image_dir": "far", "num_repeats": 2, "keep_tokens": 2},
        {"image_dir": "unknown", "num_repeats": 1, "keep_tokens": 1},
    ]


def test_configs_carry_the_smart_defaults() -> None:
    sd15 = kohya_config(plan())
    assert sd15["model_arguments"]["pretrained_model_name_or_path"] == "/models/tiny sd"
    assert sd15["dataset_arguments"]["dataset_config"] == "dataset.toml"
    training = sd15["training_arguments"]
    assert training["max_train_epochs"] == 15
    assert training["learning_rate"] == 1e-4
    assert training["output_dir"] == f"../{VERSION}-output"
    assert training["clip_skip"] == 2
    assert sd15["network_arguments"] == {
        "network_module": "networks.lora",
        "network_dim": 32,
        "network_alpha": 16,
    }
    simple = training_config(plan())
    # 12×2 + 20 + 8×2 + 3 = 63 images per epoch at batch 2.
    assert (simple["steps_per_epoch"], simple["total_steps"]) == (32, 480)
    sdxl = kohya_config(plan(version="sdxl"))
    assert "clip_skip" not in sdxl["training_arguments"]
    assert tomllib.loads(dataset_toml(plan(version="sdxl")))["datasets"][0]["resolution"] == 1024


def fake_accelerate(folder: Path) -> Path:
    """An `accelerate` on PATH that records the command line it was given."""
    folder.mkdir()
    script = folder / "accelerate"
    script.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@" > "$ARGS_FILE"\n')
    script.chmod(0o755)
    return folder


def test_train_script_runs_kohya_with_every_setting(tmp_path: Path) -> None:
    folder = tmp_path / VERSION
    folder.mkdir()
    tricky = "Aiko\nrm -rf /  # $(whoami)"
    write_training_files(
        folder,
        plan(person=tricky, base_model="/models/it's a model"),
        "2025-01-02T03:04:05",
        {"close": 12, "mid": 20, "far": 8, "unknown": 3},
        ["a warning"],
        [("close/aiko_close_0001.png", "aiko, headshot")],
    )
    script = folder / "train.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    bin_dir = fake_accelerate(tmp_path / "bin")
    args_file = tmp_path / "args.txt"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KOHYA_DIR": "/opt/sd-scripts",
        "ARGS_FILE": str(args_file),
    }
    env.pop("BASE_MODEL", None)
    env.pop("OUTPUT_DIR", None)
    result = subprocess.run(
        [str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    cwd, *args = args_file.read_text().splitlines()
    assert cwd == str(folder)  # kohya reads dataset.toml's relative image_dir from here
    assert args[:4] == [
        "launch",
        "--num_cpu_threads_per_process",
        "1",
        "/opt/sd-scripts/train_network.py",
    ]
    flags = dict(zip(args[4:], args[5:], strict=False))
    assert flags["--pretrained_model_name_or_path"] == "/models/it's a model"
    assert flags["--dataset_config"] == "dataset.toml"
    assert flags["--output_dir"] == f"{folder}/../{VERSION}-output"
    assert flags["--max_train_epochs"] == "15"
    assert flags["--network_dim"] == "32"
    assert "--gradient_checkpointing" in args and "--v2" not in args
    assert (tmp_path / f"{VERSION}-output").is_dir()
    assert json.loads((folder / "training_info.json").read_text())["person"] == tricky
    assert (folder / "metadata.jsonl").read_text() == (
        '{"file_name": "close/aiko_close_0001.png", "text": "aiko, headshot"}\n'
    )


def test_train_script_needs_kohya_and_a_base_model(tmp_path: Path) -> None:
    folder = tmp_path / "split"
    folder.mkdir()
    write_training_files(folder, plan(base_model=None), "t", {}, [], [])
    env = {k: v for k, v in os.environ.items() if k not in ("KOHYA_DIR", "BASE_MODEL")}
    run = subprocess.run(
        [str(folder / "train.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode != 0 and "KOHYA_DIR" in run.stderr
    env["KOHYA_DIR"] = "/opt/sd-scripts"
    run = subprocess.run(
        [str(folder / "train.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 1 and "set BASE_MODEL" in run.stderr


@pytest.mark.parametrize("version", ["sd15", "sdxl"])
def test_script_name_follows_the_base_model(tmp_path: Path, version: str) -> None:
    write_training_files(tmp_path, plan(version=version), "t", {}, [], [])
    script = (tmp_path / "train.sh").read_text()
    expected = "sdxl_train_network.py" if version == "sdxl" else "/train_network.py"
    assert expected in script
