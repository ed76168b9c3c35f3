"""The kohya backend against a stub train_network.py that behaves like kohya's on the outside:
the same arguments and dataset TOML, tqdm progress on stderr, `epoch N/M` lines, epoch files,
`--save_state` folders, `--resume`, and a kohya-format LoRA at the end."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lora_pipeline.dataset.service import DatasetRef
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import LoraRelease
from lora_pipeline.training.backends import run_job
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.kohya_backend import (
    KohyaError,
    parse_epoch,
    parse_progress,
)
from lora_pipeline.training.kohya_format import read_kohya_lora, save_kohya_lora
from lora_pipeline.training.service import (
    KohyaSetup,
    plan_character_training,
    register_trained_lora,
)
from lora_pipeline.training.trainer import EpochReport, TrainingConfig, TrainingProgress

STUB = r"""
import argparse, json, math, os, sys, time, tomllib
from pathlib import Path
import torch
from safetensors.torch import save_file

parser = argparse.ArgumentParser()
for name in ("pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name",
             "network_dim", "network_alpha", "max_train_epochs", "resume", "save_every_n_epochs",
             "seed", "learning_rate"):
    parser.add_argument("--" + name)
parser.add_argument("--skip_until_initial_step", action="store_true")
args, _ = parser.parse_known_args()
out = Path(args.output_dir)
with open(out / "calls.jsonl", "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\n")
dataset = tomllib.loads(Path(args.dataset_config).read_text())["datasets"][0]
images = sum(
    1 for subset in dataset["subsets"] for f in Path(subset["image_dir"]).iterdir()
    if f.suffix == ".png"
)
per_epoch = math.ceil(images / dataset["batch_size"])
epochs = int(args.max_train_epochs)
total = per_epoch * epochs
step = 0
if args.resume:
    step = json.loads((Path(args.resume) / "train_state.json").read_text())["current_step"]
print("prepare network", flush=True)
rank = int(args.network_dim)
for epoch in range(step // per_epoch, epochs):
    print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)
    for _ in range(per_epoch):
        step += 1
        done = step * 100 // total
        bar = "#" * (done // 10)
        sys.stderr.write(
            f"\rsteps: {done:3d}%|{bar:<10}| {step}/{total} [00:01<00:02,  4.00it/s, "
            f"avr_loss={1.0 / step:.4f}]"
        )
        sys.stderr.flush()
    name = args.output_name
    module = "lora_unet_mid_block_attentions_0_proj_in"
    tensors = {
        f"{module}.lora_down.weight": torch.ones(rank, 8).half(),
        f"{module}.lora_up.weight": torch.ones(8, rank).half(),
        f"{module}.alpha": torch.tensor(float(args.network_alpha)).half(),
    }
    metadata = {
        "ss_network_dim": args.network_dim, "ss_steps": str(step), "ss_epoch": str(epoch + 1),
        "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
    }
    if epoch + 1 < epochs and (epoch + 1) % int(args.save_every_n_epochs) == 0:
        save_file(tensors, out / f"{name}-{epoch + 1:06d}.safetensors", metadata)
        state = out / f"{name}-{epoch + 1:06d}-state"
        state.mkdir(exist_ok=True)
        (state / "train_state.json").write_text(
            json.dumps({"current_epoch": epoch + 1, "current_step": step})
        )
    if os.environ.get("STUB_DIE_AFTER_EPOCH") == str(epoch + 1):
        print("CUDA error: an illegal memory access was encountered", flush=True)
        sys.exit(1)
save_file(tensors, out / f"{name}.safetensors", metadata)
print("model saved.", flush=True)
"""


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.steps: list[TrainingProgress] = []
        self.epochs: list[EpochReport] = []

    def log(self, message: str, level: str = "info") -> None:
        self.lines.append(message)

    def progress(self, progress: TrainingProgress) -> None:
        self.steps.append(progress)

    def epoch(self, report: EpochReport) -> None:
        self.epochs.append(report)

    def should_stop(self) -> bool:
        return False


@pytest.fixture
def kohya_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sd-scripts"
    folder.mkdir()
    (folder / "train_network.py").write_text(STUB)
    return folder


def _job(studio, kohya_dir: Path, tiny_sd: Path) -> TrainingJob:  # noqa: ANN001
    registry, root, dataset, split = studio
    config = TrainingConfig(
        base_model=str(tiny_sd), epochs=3, batch_size=2, rank=4, alpha=2.0, device="cpu"
    )
    # the tiny model's byte-level CLIP tokenizer stands in for the studio's tokenizer folder
    kohya = KohyaSetup(kohya_dir, tokenizer_dir=tiny_sd / "tokenizer")
    return plan_character_training(registry, root, dataset, split, config, kohya, samples=False)


def test_progress_lines_of_kohya_are_understood() -> None:
    line = "steps:  10%|█         | 10/100 [00:05<00:45,  2.00it/s, avr_loss=0.123]"
    progress = parse_progress(line)
    assert progress is not None
    assert (progress.step, progress.total, progress.loss, progress.it_per_s) == (
        10,
        100,
        0.123,
        2.0,
    )
    older = parse_progress("steps: 50%|#####     | 5/10 [00:10<00:10,  2.50s/it, loss=0.5]")
    assert older is not None and older.loss == 0.5 and older.it_per_s == pytest.approx(0.4)
    assert parse_progress("epoch 1/10") is None
    assert parse_epoch("epoch 2/10") == (2, 10)
    assert parse_epoch("steps: 1/10") is None


def test_kohya_trains_the_job_and_its_lora_is_registered(
    studio,
    kohya_dir: Path,
    tiny_sd: Path,  # noqa: ANN001
) -> None:
    registry, root, dataset, split = studio
    job = _job(studio, kohya_dir, tiny_sd)
    reporter = Recorder()
    result = run_job(job, reporter)

    work = Path(job.work_dir)
    toml = tomllib.loads((work / "dataset.toml").read_text())
    assert toml["general"]["caption_extension"] == ".txt"
    assert toml["datasets"][0]["resolution"] == 512  # SD1.5's native size: the smart default
    assert toml["datasets"][0]["batch_size"] == 2
    assert sorted(Path(s["image_dir"]).name for s in toml["datasets"][0]["subsets"]) == [
        "close",
        "mid",
    ]
    (call,) = [json.loads(line) for line in (work / "calls.jsonl").read_text().splitlines()]
    assert call[call.index("--network_dim") + 1] == "4"
    assert call[call.index("--network_alpha") + 1] == "2.0"
    assert call[call.index("--max_train_epochs") + 1] == "3"
    assert "--network_train_unet_only" in call and "--save_state" in call
    assert "--resume" not in call and "--network_weights" not in call
    tokenizers = Path(call[call.index("--tokenizer_cache_dir") + 1])
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizers / "openai_clip-vit-large-patch14")
    assert tokenizer.model_max_length == 77  # what kohya needs offline

    # close: 2 batches, mid: 1 → the stub's 3 steps per epoch, 9 in all
    assert [p.step for p in reporter.steps] == list(range(1, 10))
    assert reporter.steps[-1].total_steps == 9
    assert [e.epoch for e in reporter.epochs] == [1, 2, 3]
    assert reporter.epochs[0].lora_path and reporter.epochs[0].lora_path.endswith(
        "-000001.safetensors"
    )
    assert "kohya: model saved." in reporter.lines  # a log line right after the last bar
    assert (result.steps, result.epochs) == (9, 3)
    assert result.losses[-1] == pytest.approx(1 / 9, abs=1e-4)

    tensors, metadata = read_kohya_lora(result.path)
    assert result.path == job.output_file and len(tensors) == 3
    assert metadata["ss_network_dim"] == "4"  # kohya's own keys stay
    assert metadata["lora_pipeline.dataset_hash"] == "d" * 64
    unet_weights = tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"
    import hashlib

    assert (
        metadata["lora_pipeline.base_model_hash"]
        == hashlib.sha256(unet_weights.read_bytes()).hexdigest()
    )
    assert metadata["lora_pipeline.trigger_word"] == "zkaiko"
    assert metadata["sshs_model_hash"]

    loras = root.path("comfyui-loras")
    release = register_trained_lora(registry, root, dataset, job, result, loras)
    assert Path(release.comfyui_copy).is_file()
    with registry.session() as session:
        row = session.get(LoraRelease, release.release_id)
        assert row.status == "candidate"
        assert row.hyperparameters["backend"] == "kohya"
        assert row.hyperparameters["rank"] == 4 and row.hyperparameters["steps"] == 9


def test_a_crashed_kohya_run_fails_clearly_and_resumes_from_its_state(
    studio,
    kohya_dir: Path,
    tiny_sd: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    job = _job(studio, kohya_dir, tiny_sd)
    monkeypatch.setenv("STUB_DIE_AFTER_EPOCH", "1")
    with pytest.raises(KohyaError, match="(?s)exit code 1:.*illegal memory access"):
        run_job(job, Recorder())
    assert not job.output_file.exists()

    monkeypatch.delenv("STUB_DIE_AFTER_EPOCH")
    reporter = Recorder()
    result = run_job(job, reporter)
    calls = [json.loads(x) for x in (Path(job.work_dir) / "calls.jsonl").read_text().splitlines()]
    resumed = calls[-1]
    assert resumed[resumed.index("--resume") + 1].endswith("lora-000001-state")
    assert "--skip_until_initial_step" in resumed
    assert [p.step for p in reporter.steps] == list(range(4, 10)), "no step trained twice"
    assert (result.steps, result.resumed_from_step) == (9, 3)
    assert "resuming kohya from its saved state lora-000001-state" in reporter.lines


def test_missing_kohya_is_a_clear_error(studio, tmp_path: Path, tiny_sd: Path) -> None:  # noqa: ANN001
    job = _job(studio, tmp_path / "nowhere", tiny_sd)
    with pytest.raises(KohyaError, match="kohya sd-scripts not found: .*train_network.py"):
        run_job(job, Recorder())


def _init_lora(path: Path, rank: int, alpha: float, module: str) -> Path:
    tensors = {
        f"{module}.lora_down.weight": torch.ones(rank, 8).half(),
        f"{module}.lora_up.weight": torch.ones(8, rank).half(),
        f"{module}.alpha": torch.tensor(alpha).half(),
    }
    save_kohya_lora(path, tensors, {"ss_network_dim": str(rank)})
    return path


def test_a_job_with_init_lora_passes_it_as_network_weights(
    studio: tuple[Registry, DataRoot, DatasetRef, str],
    kohya_dir: Path,
    tiny_sd: Path,
    tmp_path: Path,
) -> None:
    job = _job(studio, kohya_dir, tiny_sd)
    module = "lora_unet_mid_block_attentions_0_proj_in"
    parent = _init_lora(tmp_path / "parent.safetensors", 4, 2.0, module)
    job = replace(job, config=replace(job.config, init_lora=str(parent)))
    result = run_job(job, Recorder())
    (call,) = [json.loads(x) for x in (Path(job.work_dir) / "calls.jsonl").read_text().splitlines()]
    assert call[call.index("--network_weights") + 1] == str(parent)
    assert result.config["init_lora"] == str(parent)
    metadata = read_kohya_lora(result.path)[1]
    assert metadata["lora_pipeline.init_lora"] == "parent.safetensors"
    assert (
        metadata["lora_pipeline.init_lora_model_hash"]
        == (read_kohya_lora(parent)[1]["sshs_model_hash"])
    )


@pytest.mark.parametrize(
    ("rank", "alpha", "module", "message"),
    [
        (8, 2.0, "lora_unet_mid_block_attentions_0_proj_in", "its rank is 8, this run's is 4"),
        (4, 4.0, "lora_unet_mid_block_attentions_0_proj_in", "its alpha is 4, this run's is 2"),
        (4, 2.0, "lora_te_text_model_encoder_layers_0_mlp_fc1", "adapts the text encoder"),
    ],
)
def test_kohya_refuses_an_init_lora_it_would_load_wrongly(
    studio: tuple[Registry, DataRoot, DatasetRef, str],
    kohya_dir: Path,
    tiny_sd: Path,
    tmp_path: Path,
    rank: int,
    alpha: float,
    module: str,
    message: str,
) -> None:
    job = _job(studio, kohya_dir, tiny_sd)
    parent = _init_lora(tmp_path / "parent.safetensors", rank, alpha, module)
    job = replace(job, config=replace(job.config, init_lora=str(parent)))
    with pytest.raises(
        KohyaError, match=f"cannot start from init_lora .*parent.safetensors: .*{message}"
    ):
        run_job(job, Recorder())
    assert not (Path(job.work_dir) / "calls.jsonl").exists(), "kohya was never started"
