"""The kohya backend against a stub train_network.py that behaves like kohya's on the outside:
the same arguments and dataset TOML, tqdm progress on stderr, `epoch N/M` lines, epoch files,
`--save_state` folders, `--resume`, and a kohya-format LoRA at the end."""

from __future__ import annotations

import json
import subprocess
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
from lora_pipeline.training.experiment import experiment_log_path
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.kohya_backend import (
    KohyaError,
    bucket_settings,
    parse_epoch,
    parse_progress,
    sd_scripts_commit,
)
from lora_pipeline.training.kohya_format import package_version, read_kohya_lora, save_kohya_lora
from lora_pipeline.training.service import (
    KohyaSetup,
    plan_character_training,
    register_trained_lora,
)
from lora_pipeline.training.trainer import EpochReport, TrainingConfig, TrainingProgress

STUB = r"""
# What kohya sd-scripts 48d368fa's train_network.py does, seen from outside (checked against the
# real one: see shared/reference/README.md):
# - min/max_bucket_reso are rounded to multiples of bucket_reso_steps (which must divide by 64
#   for SD1.x); a minimum rounded to 0 crashes in make_bucket_resolutions (ZeroDivisionError);
# - --resume reads current_step from train_state.json and with --skip_until_initial_step skips
#   the whole epochs it covers; then global_step and the progress bar restart at 0 (the bar's
#   total stays max_train_steps), so ss_steps and the next states' current_step count only the
#   resumed part; resuming from a state at max_train_steps fails an assertion;
# - states after each saved epoch but the last (lora-00000N-state), and the final lora-state;
# - a random ss_session_id per process.
import argparse, json, math, os, random, sys, time, tomllib
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
toml = tomllib.loads(Path(args.dataset_config).read_text())
general, dataset = toml["general"], toml["datasets"][0]
if general.get("enable_bucket"):
    steps = general.get("bucket_reso_steps", 64)
    assert steps % 64 == 0, f"bucket_reso_steps is {steps}. it must be divisible by 64."
    low = general.get("min_bucket_reso", 256)
    high = general.get("max_bucket_reso", 1024)
    low -= low % steps
    if high % steps:
        high += steps - high % steps
    assert dataset["resolution"] >= low, "min_bucket_reso must be equal or less than resolution"
    assert dataset["resolution"] <= high, "max_bucket_reso must be equal or greater than resolution"
    area = dataset["resolution"] ** 2
    (area // low) // steps  # make_bucket_resolutions: ZeroDivisionError when low is 0
images = sum(
    1 for subset in dataset["subsets"] for f in Path(subset["image_dir"]).iterdir()
    if f.suffix == ".png"
)
per_epoch = math.ceil(images / dataset["batch_size"])
epochs = int(args.max_train_epochs)
total = per_epoch * epochs
session_id = random.randint(0, 2**32)
initial_step = 0
if args.resume:
    initial_step = json.loads((Path(args.resume) / "train_state.json").read_text())["current_step"]
    assert total > initial_step, f"max_train_steps should be greater: {total} vs {initial_step}"
epoch_to_start = initial_step // per_epoch if args.skip_until_initial_step else 0
initial_step -= epoch_to_start * per_epoch
global_step = initial_step  # kohya's restart: the skipped epochs are not counted
print("prepare network", flush=True)
rank = int(args.network_dim)
name = args.output_name
module = "lora_unet_mid_block_attentions_0_proj_in"
tensors = {
    f"{module}.lora_down.weight": torch.ones(rank, 8).half(),
    f"{module}.lora_up.weight": torch.ones(8, rank).half(),
    f"{module}.alpha": torch.tensor(float(args.network_alpha)).half(),
}

def metadata(epoch):
    return {
        "ss_network_dim": args.network_dim, "ss_steps": str(global_step), "ss_epoch": str(epoch),
        "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
        "ss_session_id": str(session_id), "ss_sd_scripts_commit_hash": "(unknown)",
    }

def save_state(folder):
    folder.mkdir(exist_ok=True)
    (folder / "train_state.json").write_text(
        json.dumps({"current_epoch": epoch + 1, "current_step": global_step})
    )

bar = 0
for epoch in range(epoch_to_start, epochs):
    print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)
    for _ in range(per_epoch):
        global_step += 1
        bar += 1
        done = bar * 100 // (total - initial_step)
        sys.stderr.write(
            f"\rsteps: {done:3d}%|{'#' * (done // 10):<10}| {bar}/{total - initial_step} "
            f"[00:01<00:02,  4.00it/s, avr_loss={1.0 / bar:.4f}]"
        )
        sys.stderr.flush()
    if epoch + 1 < epochs and (epoch + 1) % int(args.save_every_n_epochs) == 0:
        save_file(tensors, out / f"{name}-{epoch + 1:06d}.safetensors", metadata(epoch + 1))
        save_state(out / f"{name}-{epoch + 1:06d}-state")
    if os.environ.get("STUB_DIE_AFTER_EPOCH") == str(epoch + 1):
        print("CUDA error: an illegal memory access was encountered", flush=True)
        sys.exit(1)
save_state(out / f"{name}-state")
save_file(tensors, out / f"{name}.safetensors", metadata(epochs))
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


def _job(studio, kohya_dir: Path, tiny_sd: Path, log=lambda _: None) -> TrainingJob:  # noqa: ANN001
    registry, root, dataset, split = studio
    config = TrainingConfig(
        base_model=str(tiny_sd), epochs=3, batch_size=2, rank=4, alpha=2.0, device="cpu"
    )
    # the tiny model's byte-level CLIP tokenizer stands in for the studio's tokenizer folder
    kohya = KohyaSetup(kohya_dir, tokenizer_dir=tiny_sd / "tokenizer")
    return plan_character_training(
        registry, root, dataset, split, config, kohya, samples=False, log=log
    )


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


def _calls(job: TrainingJob) -> list[list[str]]:
    lines = (Path(job.work_dir) / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _states(job: TrainingJob) -> list[str]:
    return sorted(p.name for p in Path(job.work_dir).glob("*-state"))


def test_a_crashed_kohya_run_fails_clearly_and_resumes_from_its_state(
    studio,
    kohya_dir: Path,
    tiny_sd: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    job = _job(studio, kohya_dir, tiny_sd)
    monkeypatch.setenv("STUB_DIE_AFTER_EPOCH", "1")
    with pytest.raises(KohyaError) as failed:
        run_job(job, Recorder())
    # the first line names kohya's error, the tail follows
    first, *tail = str(failed.value).splitlines()
    assert first == (
        "kohya train_network.py failed (exit code 1): "
        "CUDA error: an illegal memory access was encountered"
    )
    assert "prepare network" in tail
    assert not job.output_file.exists()

    monkeypatch.delenv("STUB_DIE_AFTER_EPOCH")
    reporter = Recorder()
    result = run_job(job, reporter)
    resumed = _calls(job)[-1]
    assert resumed[resumed.index("--resume") + 1].endswith("lora-000001-state")
    assert "--skip_until_initial_step" in resumed
    # kohya's bar restarted at 0 after skipping epoch 1: the steps are made global again
    assert [p.step for p in reporter.steps] == list(range(4, 10)), "no step trained twice"
    assert {p.total_steps for p in reporter.steps} == {9}
    assert (result.steps, result.resumed_from_step) == (9, 3)
    assert read_kohya_lora(result.path)[1]["ss_steps"] == "9"  # kohya wrote 6
    assert result.history == list(range(4, 10))
    epoch_2 = read_kohya_lora(Path(job.work_dir) / "lora-000002.safetensors")[1]
    assert epoch_2["ss_steps"] == "6"  # kohya wrote 3, from its restart
    assert "resuming kohya from its saved state lora-000001-state (step 3)" in reporter.lines


def test_a_second_resume_skips_every_epoch_already_trained(
    studio, kohya_dir: Path, tiny_sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """The states a resumed kohya saves count from its restart (epoch 2's says step 3, not 6):
    resuming from one as it is would train epoch 2 twice."""
    job = _job(studio, kohya_dir, tiny_sd)
    job = replace(job, config=replace(job.config, epochs=4, save_every_n_epochs=1))
    for die_after in ("1", "2"):
        monkeypatch.setenv("STUB_DIE_AFTER_EPOCH", die_after)
        with pytest.raises(KohyaError):
            run_job(job, Recorder())
    state = json.loads((Path(job.work_dir) / "lora-000002-state" / "train_state.json").read_text())
    assert state["current_step"] == 6
    monkeypatch.delenv("STUB_DIE_AFTER_EPOCH")
    reporter = Recorder()
    result = run_job(job, reporter)
    last = _calls(job)[-1]
    assert last[last.index("--resume") + 1].endswith("lora-000002-state")
    assert [e.epoch for e in reporter.epochs] == [3, 4]
    assert [p.step for p in reporter.steps] == list(range(7, 13))
    assert (result.steps, result.resumed_from_step) == (12, 6)


def test_a_finished_run_leaves_no_state_and_a_rerun_trains_afresh(
    studio, kohya_dir: Path, tiny_sd: Path
) -> None:  # noqa: ANN001
    job = _job(studio, kohya_dir, tiny_sd)
    first = run_job(job, Recorder())
    assert _states(job) == [], "kohya's epoch states and its final lora-state are cleared"

    reporter = Recorder()
    again = run_job(job, reporter)
    second = _calls(job)[-1]
    assert "--resume" not in second
    assert any(
        line.startswith("dataset version dddddddddddd was trained to the end before (9 steps,")
        and "training it again from the start" in line
        for line in reporter.lines
    )
    assert [p.step for p in reporter.steps] == list(range(1, 10))
    assert (again.steps, again.resumed_from_step, again.epochs) == (9, 0, 3)
    # kohya draws a session id per run; the backend keeps kohya's
    assert first.metadata["ss_session_id"] != again.metadata["ss_session_id"]


def test_a_work_folder_with_kohyas_final_state_trains_afresh(
    studio, kohya_dir: Path, tiny_sd: Path
) -> None:  # noqa: ANN001
    """Work folders of runs from before the finished marker still hold kohya's final state:
    resuming from it would train the last epoch again on top of the finished LoRA."""
    job = _job(studio, kohya_dir, tiny_sd)
    work = Path(job.work_dir)
    for name, step in (("lora-000002-state", 6), ("lora-state", 9)):
        (work / name).mkdir(parents=True)
        (work / name / "train_state.json").write_text(json.dumps({"current_step": step}))
    reporter = Recorder()
    result = run_job(job, reporter)
    assert "--resume" not in _calls(job)[-1]
    assert any("was trained to the end before" in line for line in reporter.lines)
    assert (result.steps, result.resumed_from_step) == (9, 0)


@pytest.mark.parametrize(
    ("resolution", "version", "expected"),
    [
        (512, "sd15", {"min_bucket_reso": 256, "max_bucket_reso": 1024}),
        (1024, "sdxl", {"min_bucket_reso": 512, "max_bucket_reso": 2048}),
        (96, "sd15", {"min_bucket_reso": 64, "max_bucket_reso": 192}),
        (64, "sd15", {"min_bucket_reso": 64, "max_bucket_reso": 128}),
        (200, "sd15", {"min_bucket_reso": 64, "max_bucket_reso": 448}),
        (40, "sdxl", {"min_bucket_reso": 32, "max_bucket_reso": 96}),
    ],
)
def test_bucket_settings_are_multiples_of_the_step_around_the_resolution(
    resolution: int, version: str, expected: dict
) -> None:
    settings = bucket_settings(resolution, version, True)
    assert settings["enable_bucket"] is True
    assert {k: settings[k] for k in expected} == expected
    step = settings["bucket_reso_steps"]
    low, high = settings["min_bucket_reso"], settings["max_bucket_reso"]
    assert low % step == 0 and high % step == 0 and 0 < low <= resolution <= high
    assert bucket_settings(32, "sd15", True) == {"enable_bucket": False}
    assert bucket_settings(512, "sd15", False) == {"enable_bucket": False}


@pytest.mark.parametrize("resolution", [32, 64, 96, 200])
def test_kohya_trains_at_small_resolutions_with_buckets_on(
    studio, kohya_dir: Path, tiny_sd: Path, resolution: int
) -> None:  # noqa: ANN001
    """resolution // 2 used to go to kohya as min_bucket_reso, which it rounds down to a
    multiple of 64: 0 below 128, and the stub (like kohya) dies of ZeroDivisionError."""
    job = _job(studio, kohya_dir, tiny_sd)
    job = replace(job, config=replace(job.config, resolution=resolution, enable_bucket=True))
    reporter = Recorder()
    result = run_job(job, reporter)
    assert result.steps == 9
    general = tomllib.loads((Path(job.work_dir) / "dataset.toml").read_text())["general"]
    assert general["enable_bucket"] is (resolution >= 64)
    if resolution < 64:
        assert any("buckets off" in line for line in reporter.lines)


def test_a_kohya_crash_names_its_exception(studio, kohya_dir: Path, tiny_sd: Path) -> None:  # noqa: ANN001
    job = _job(studio, kohya_dir, tiny_sd)
    toml_writer = kohya_dir / "train_network.py"
    toml_writer.write_text(
        "import sys\nprint('loading')\nprint('Traceback (most recent call last):')\n"
        "print('  File \"x.py\", line 1')\nprint('ZeroDivisionError: integer division or modulo"
        " by zero')\nsys.exit(1)\n"
    )
    with pytest.raises(KohyaError) as failed:
        run_job(job, Recorder())
    assert str(failed.value).splitlines()[0] == (
        "kohya train_network.py failed (exit code 1): "
        "ZeroDivisionError: integer division or modulo by zero"
    )


def test_the_sd_scripts_commit_and_versions_are_recorded(
    studio, kohya_dir: Path, tiny_sd: Path
) -> None:  # noqa: ANN001
    registry, root, dataset, _ = studio
    job = _job(studio, kohya_dir, tiny_sd)
    assert sd_scripts_commit(kohya_dir) == "unknown"  # not a git checkout
    git = ["git", "-C", str(kohya_dir)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run(
        [*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "stub"], check=True
    )
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    result = run_job(job, Recorder())
    metadata = read_kohya_lora(result.path)[1]
    assert metadata["lora_pipeline.sd_scripts_commit"] == head.strip()
    assert metadata["lora_pipeline.version"] == package_version()
    assert result.versions == {"lora_pipeline": package_version(), "sd_scripts": head.strip()}

    log = json.loads(experiment_log_path(result.path).read_text())
    assert log["backend"] == "kohya" and log["dataset_hash"] == "d" * 64
    assert log["versions"]["sd_scripts"] == head.strip()
    assert log["config"]["rank"] == 4 and log["steps"] == 9
    assert [step for step, _ in log["losses"]] == list(range(1, 10))
    assert log["command"][1].endswith("train_network.py")

    release = register_trained_lora(registry, root, dataset, job, result)
    with registry.session() as session:
        row = session.get(LoraRelease, release.release_id)
        assert row.hyperparameters["versions"]["sd_scripts"] == head.strip()
    from lora_pipeline.evaluation.service import write_model_card

    card = write_model_card(registry, root, release.release_id).read_text()
    versions_row = next(line for line in card.splitlines() if line.startswith("| versions |"))
    assert head.strip() in versions_row and package_version() in versions_row


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


def test_a_kohya_killed_by_a_signal_says_so(studio, kohya_dir: Path, tiny_sd: Path) -> None:  # noqa: ANN001
    job = _job(studio, kohya_dir, tiny_sd)
    (kohya_dir / "train_network.py").write_text(
        "import os, signal\nprint('epoch 1/3')\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    with pytest.raises(KohyaError) as failed:
        run_job(job, Recorder())
    assert str(failed.value).splitlines()[0] == (
        "kohya train_network.py killed by signal 9 (SIGKILL: most often the out-of-memory killer)"
    )


def test_a_rerun_of_a_registered_version_keeps_the_earlier_releases_file(
    studio, kohya_dir: Path, tiny_sd: Path
) -> None:  # noqa: ANN001
    registry, root, dataset, _ = studio
    job = _job(studio, kohya_dir, tiny_sd)
    first = register_trained_lora(registry, root, dataset, job, run_job(job, Recorder()))
    kept = root.path(first.relpath).read_bytes()

    notes: list[str] = []
    again = _job(studio, kohya_dir, tiny_sd, log=notes.append)
    assert again.output_file.name == f"aiko-{'d' * 12}-run2.safetensors"
    assert again.work_dir == job.work_dir  # the same kohya work folder: a rerun, said as such
    assert any("was trained before" in note for note in notes)
    second = register_trained_lora(registry, root, dataset, again, run_job(again, Recorder()))
    assert second.release_id != first.release_id and second.relpath != first.relpath
    assert root.path(first.relpath).read_bytes() == kept
