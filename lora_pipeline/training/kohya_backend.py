"""The kohya sd-scripts backend: the same job, trained by `train_network.py`.

For studios that already trust kohya: the job's settings become a dataset TOML (one subset per
shot folder of the kohya layout) and an argument list, `train_network.py` (or
`sdxl_train_network.py`) runs as a subprocess, its tqdm progress lines
(`steps:  10%|█   | 10/100 [00:05<00:45, 2.00it/s, avr_loss=0.123]`) and `epoch N/M` lines become
the same progress reports as the built-in trainer's, and its output file gets the project's
metadata (dataset hash, base checkpoint hash, version) before it is registered the same way.

Resume: kohya saves its state (`--save_state`) at every saved epoch; a later run of the same job
passes `--resume <newest state> --skip_until_initial_step`, with which kohya restores the
optimizer and scheduler and skips the epochs already trained. kohya (48d368fa) then restarts its
progress bar and `global_step` at 0, so its step counts (the bar, `ss_steps`, the `current_step`
of the states it saves next) cover only the resumed part: this backend adds the resumed state's
step back to all of them, so that reports, `ss_steps` and a second resume are global.

A finished run leaves no state behind (kohya's final `lora-state` included): a second run of the
same dataset version says that it was trained before and trains it from the start, rather than
resuming the finished run's final state and training on top of the finished LoRA.

A job whose config has `init_lora` starts from that LoRA (`--network_weights`). kohya loads it
loosely (unknown modules are skipped, its alpha is not applied), so the file's rank, alpha and
adapted parts are checked against the run's settings first.
"""

from __future__ import annotations

import json
import math
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import torch

from lora_pipeline.config import child_environment
from lora_pipeline.model_configs import ModelConfigError, write_tokenizer
from lora_pipeline.training.base_model import sha256_and_legacy_hash, unet_weights_file_of
from lora_pipeline.training.data import tag_frequency
from lora_pipeline.training.defaults import detect_base_model_version
from lora_pipeline.training.errors import TrainingError, TrainingInterrupted
from lora_pipeline.training.job import TrainingJob, TrainingReporter
from lora_pipeline.training.kohya_format import (
    LoraFormatError,
    package_version,
    read_kohya_lora,
    save_kohya_lora,
)
from lora_pipeline.training.options import TrainingConfig, auto_save_every, resolve_config
from lora_pipeline.training.reports import EpochReport, TrainingProgress, TrainingResult

SCRIPTS = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py"}
# kohya looks for its tokenizers in --tokenizer_cache_dir under these hub ids ("/" → "_"); the
# second is SDXL's, which pads with "!".
KOHYA_TOKENIZERS = {
    "sd15": {"openai/clip-vit-large-patch14": "<|endoftext|>"},
    "sdxl": {
        "openai/clip-vit-large-patch14": "<|endoftext|>",
        "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": "!",
    },
}
OUTPUT_NAME = "lora"
STOP_GRACE_SECONDS = 30.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_PROGRESS = re.compile(r"steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]")
_LOSS = re.compile(r"(?:avr_loss|loss)=\s*([-+0-9.eE]+|nan|inf)")
_RATE = re.compile(r"([0-9.]+)\s*(it/s|s/it)")
_EPOCH = re.compile(r"^\s*epoch (\d+)/(\d+)\s*$")
_STATE = re.compile(rf"^{OUTPUT_NAME}(?:-(\d+))?-state$")
# kohya's buckets: train_network.py asserts that bucket_reso_steps divides by 64 (SD1.x) or 32
# (SDXL), and rounds min_bucket_reso down to a multiple of it (0 crashes it, ZeroDivisionError).
BUCKET_RESO_STEPS = {"sd15": 64, "sdxl": 32}
# Beside kohya's states in the work folder: which resumed process wrote which state (its step
# offset), and the marker of a run that finished.
OFFSET_FILE = "lora_pipeline-offset.json"
FINISHED_FILE = "lora_pipeline-finished.json"
# Written into each state's train_state.json once its step count is global.
GLOBAL_STEP_MARK = "lora_pipeline_step_offset"


class KohyaError(TrainingError):
    """kohya sd-scripts is missing, misconfigured, or its run failed."""


@dataclass(frozen=True)
class KohyaProgress:
    step: int
    total: int
    loss: float | None
    it_per_s: float | None


def parse_progress(line: str) -> KohyaProgress | None:
    """A tqdm `steps:` update of train_network.py, or None for any other line."""
    match = _PROGRESS.search(line)
    if not match:
        return None
    postfix = match.group(3)
    loss = _LOSS.search(postfix)
    rate = _RATE.search(postfix)
    it_per_s = None
    if rate:
        value = float(rate.group(1))
        it_per_s = value if rate.group(2) == "it/s" else (1 / value if value else None)
    return KohyaProgress(
        step=int(match.group(1)),
        total=int(match.group(2)),
        loss=float(loss.group(1)) if loss else None,
        it_per_s=it_per_s,
    )


def parse_epoch(line: str) -> tuple[int, int] | None:
    match = _EPOCH.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def image_folders(dataset_dir: Path) -> list[Path]:
    """The folders of a kohya-layout dataset that hold images (close/, mid/, far/, …)."""
    folders = [dataset_dir] + sorted(p for p in dataset_dir.iterdir() if p.is_dir())
    return [
        folder
        for folder in folders
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir() if f.is_file())
    ]


def bucket_settings(resolution: int, version: str, enable_bucket: bool) -> dict[str, object]:
    """kohya's bucket options for `resolution`, valid at every size: min and max bucket sides
    are multiples of `bucket_reso_steps` (kohya would round them, a minimum of 0 crashes it)
    around the resolution (it asserts min ≤ resolution ≤ max). Below one step of resolution
    no bucket fits, so bucketing is off there."""
    steps = BUCKET_RESO_STEPS[version]
    if not enable_bucket or resolution < steps:
        return {"enable_bucket": False}
    half, double = resolution // 2, resolution * 2
    return {
        "enable_bucket": True,
        "min_bucket_reso": max(steps, half - half % steps),
        "max_bucket_reso": -(-double // steps) * steps,
        "bucket_reso_steps": steps,
        "bucket_no_upscale": False,
    }


def dataset_toml(config: TrainingConfig, folders: list[Path], version: str = "sd15") -> str:
    """kohya's dataset config: general caption settings, one dataset, a subset per folder."""
    general = {
        "caption_extension": ".txt",
        "shuffle_caption": config.shuffle_caption,
        "keep_tokens": config.keep_tokens,
        **bucket_settings(config.resolution, version, config.enable_bucket),
    }
    lines = ["[general]"] + [f"{k} = {_toml_value(v)}" for k, v in general.items()]
    lines += [
        "",
        "[[datasets]]",
        f"resolution = {config.resolution}",
        f"batch_size = {config.batch_size}",
    ]
    for folder in folders:
        lines += [
            "",
            "  [[datasets.subsets]]",
            f"  image_dir = {_toml_value(folder)}",
            "  num_repeats = 1",
        ]
    return "\n".join(lines) + "\n"


def latest_state(work_dir: Path) -> Path | None:
    """The newest epoch state kohya's `--save_state` left (`lora-000002-state`); never the final
    `lora-state` of a finished run, which has nothing left to train."""
    states = [
        p for p in work_dir.glob(f"{OUTPUT_NAME}-*-state") if p.is_dir() and _STATE.match(p.name)
    ]
    return max(states, key=lambda p: (state_step(p), p.stat().st_mtime_ns)) if states else None


def sd_scripts_commit(scripts_dir: Path) -> str:
    """`git rev-parse HEAD` of the sd-scripts folder, or "unknown" (no git, not a checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(scripts_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", commit) else "unknown"


def _train_state(state: Path) -> dict:
    try:
        values = json.loads((state / "train_state.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def state_step(state: Path) -> int:
    """The global step a kohya state was saved at (its train_state.json), 0 if unreadable."""
    step = _train_state(state).get("current_step", 0)
    return step if isinstance(step, int) and step > 0 else 0


def make_state_steps_global(work_dir: Path, offset: int) -> None:
    """Add `offset` (the step the process that saved them resumed from) to the step count of
    the states not yet made global: kohya counts from 0 after a resume, and a later resume from
    such a state would skip too few epochs and train some twice."""
    for state in work_dir.glob(f"{OUTPUT_NAME}*-state"):
        values = _train_state(state)
        if not values or GLOBAL_STEP_MARK in values or not _STATE.match(state.name):
            continue
        values["current_step"] = int(values.get("current_step", 0)) + offset
        values[GLOBAL_STEP_MARK] = offset
        (state / "train_state.json").write_text(json.dumps(values), "utf-8")


def make_file_steps_global(lora_file: Path, offset: int) -> None:
    """An epoch file a resumed kohya saved says ss_steps from its restart: add `offset` once."""
    if offset <= 0:
        return
    try:
        tensors, metadata = read_kohya_lora(lora_file)
    except LoraFormatError:
        return
    if GLOBAL_STEP_MARK in metadata:
        return
    metadata = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    metadata["ss_steps"] = str(_int(metadata.get("ss_steps")) + offset)
    metadata[GLOBAL_STEP_MARK] = str(offset)
    save_kohya_lora(lora_file, tensors, metadata)


def clear_states(work_dir: Path) -> None:
    """Remove every kohya state of the work folder (the final `lora-state` too)."""
    for state in work_dir.glob(f"{OUTPUT_NAME}*-state"):
        if state.is_dir() and _STATE.match(state.name):
            shutil.rmtree(state, ignore_errors=True)


def tokenizer_cache(tokenizer_dir: Path, version: str, cache_dir: Path) -> Path:
    """kohya's --tokenizer_cache_dir layout, built from a CLIP tokenizer folder, so that kohya
    never reaches for the hub."""
    for hub_id, pad_token in KOHYA_TOKENIZERS[version].items():
        write_tokenizer(tokenizer_dir, cache_dir / hub_id.replace("/", "_"), pad_token)
    return cache_dir


def kohya_arguments(
    job: TrainingJob,
    config: TrainingConfig,
    version: str,
    toml_file: Path,
    resume: Path | None,
    tokenizers: Path | None = None,
) -> list[str]:
    """The command line of train_network.py for `config` (every value explicit)."""
    work_dir = Path(job.work_dir or "")
    script = Path(job.kohya_dir or "") / SCRIPTS[version]
    args = [
        job.kohya_python or sys.executable,
        str(script),
        "--pretrained_model_name_or_path", config.base_model,
        "--dataset_config", str(toml_file),
        "--output_dir", str(work_dir),
        "--output_name", OUTPUT_NAME,
        "--save_model_as", "safetensors",
        "--save_precision", "fp16",
        "--network_module", "networks.lora",
        "--network_dim", str(config.rank),
        "--network_alpha", str(config.alpha),
        "--learning_rate", str(config.learning_rate),
        "--unet_lr", str(config.learning_rate),
        "--optimizer_type", "AdamW8bit" if config.optimizer == "adamw8bit" else "AdamW",
        "--lr_scheduler", config.lr_scheduler,
        "--lr_warmup_steps", str(config.lr_warmup_steps),
        "--mixed_precision", config.mixed_precision,
        "--seed", str(config.seed),
        "--caption_extension", ".txt",
        "--save_every_n_epochs", str(config.save_every_n_epochs),
        "--save_last_n_epochs", str(config.keep_last_n_epochs),
        "--save_state",
        "--save_last_n_epochs_state", str(config.keep_last_n_epochs),
        "--training_comment", f"lora_pipeline dataset {config.dataset_hash}",
    ]  # fmt: skip
    if config.max_steps:
        args += ["--max_train_steps", str(config.max_steps)]
    else:
        args += ["--max_train_epochs", str(config.epochs)]
    if config.conv_rank:
        args += [
            "--network_args",
            f"conv_dim={config.conv_rank}",
            f"conv_alpha={config.conv_alpha}",
        ]
    if config.train_text_encoder:
        args += ["--text_encoder_lr", str(config.text_encoder_lr)]
    else:
        args.append("--network_train_unet_only")
    if config.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    if config.noise_offset:
        args += ["--noise_offset", str(config.noise_offset)]
    if config.min_snr_gamma:
        args += ["--min_snr_gamma", str(config.min_snr_gamma)]
    if config.cache_latents:
        args.append("--cache_latents")
    if tokenizers is not None:
        args += ["--tokenizer_cache_dir", str(tokenizers)]
    if config.device.startswith("cuda"):
        args.append("--sdpa")
    if config.sample_prompts:
        args += [
            "--sample_prompts", str(work_dir / "sample_prompts.txt"),
            "--sample_every_n_epochs", str(config.save_every_n_epochs),
            "--sample_sampler", "euler_a",
        ]  # fmt: skip
    if config.init_lora:
        args += ["--network_weights", config.init_lora]
    if resume is not None:
        args += ["--resume", str(resume), "--skip_until_initial_step"]
    return args


def _is_3x3(down: torch.Tensor) -> bool:
    return down.ndim == 4 and tuple(down.shape[-2:]) != (1, 1)


def init_lora_problems(tensors: Mapping[str, torch.Tensor], config: TrainingConfig) -> list[str]:
    """Why kohya could not continue from a LoRA with these tensors under `config` (it does not
    check: a rank mismatch crashes deep in its log, other alphas or parts are silently lost)."""
    problems: set[str] = set()
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        module = key.removesuffix(".lora_down.weight")
        conv = _is_3x3(down)
        rank, alpha = (config.conv_rank, config.conv_alpha) if conv else (config.rank, config.alpha)
        kind = "3×3 convolution (conv_rank)" if conv else "rank"
        if down.shape[0] != rank:
            problems.add(f"its {kind} is {down.shape[0]}, this run's is {rank}")
        file_alpha = tensors.get(f"{module}.alpha")
        # fp16 alphas are rounded: compare to the file's precision.
        if file_alpha is not None and not math.isclose(float(file_alpha), alpha, rel_tol=1e-3):
            problems.add(f"its alpha is {float(file_alpha):g}, this run's is {alpha:g}")
        if module.startswith("lora_te") and not config.train_text_encoder:
            problems.add("it adapts the text encoder, this run trains the UNet only")
    return sorted(problems)


def check_init_lora(config: TrainingConfig) -> str:
    """KohyaError when kohya cannot continue from `config.init_lora`; its sshs_model_hash."""
    path = Path(config.init_lora or "")
    try:
        tensors, header = read_kohya_lora(path)
    except LoraFormatError as error:
        raise KohyaError(f"cannot start from init_lora: {error}") from error
    problems = init_lora_problems(tensors, config)
    if problems:
        raise KohyaError(f"cannot start from init_lora {path}: {'; '.join(problems)}")
    return header.get("sshs_model_hash", "")


def _sample_prompts(config: TrainingConfig) -> str:
    # kohya's prompt file: one prompt per line with --n negative, --w/--h size, --s steps,
    # --l guidance scale, --d seed.
    lines = []
    for index, prompt in enumerate(config.sample_prompts):
        line = f"{prompt} --w {config.resolution} --h {config.resolution}"
        line += (
            f" --s {config.sample_steps} --l {config.sample_cfg} --d {config.sample_seed + index}"
        )
        if config.sample_negative_prompt:
            line += f" --n {config.sample_negative_prompt}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _lines(stream: BinaryIO) -> Iterator[str]:
    """Lines of a process's output, split at \\n and at tqdm's \\r updates."""
    buffer = b""
    while chunk := stream.read1(4096):
        buffer += chunk
        *complete, buffer = re.split(rb"[\r\n]", buffer)
        for line in complete:
            if line.strip():
                yield line.decode("utf-8", "replace")
    if buffer.strip():
        yield buffer.decode("utf-8", "replace")


@dataclass
class _KohyaRun:
    """What the output of one kohya process told us."""

    started: float = field(default_factory=time.perf_counter)
    losses: dict[int, float] = field(default_factory=dict)
    step: int = 0
    total: int = 0
    epoch: int = 0
    epochs: int = 0
    epoch_started: float = field(default_factory=time.perf_counter)
    # The global step kohya resumed from: its bar and step counts restart at 0 after --resume.
    offset: int = 0
    trained: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)


class _KohyaProcess:
    """train_network.py running, its output read on a thread so that a stop request is seen."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = child_environment(PYTHONUNBUFFERED="1")
        try:
            self.process = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as error:
            raise KohyaError(f"cannot start kohya ({args[0]} {args[1]}): {error}") from error
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="kohya-output", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in _lines(self.process.stdout):
            self.lines.put(line)
        self.lines.put(None)

    def stop(self) -> None:
        """Ask kohya to stop (SIGINT, as Ctrl-C would), then kill it if it does not."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _KohyaTraining:
    def __init__(self, job: TrainingJob, reporter: TrainingReporter) -> None:
        self.job = job
        self.reporter = reporter
        self.work_dir = Path(job.work_dir or "")
        self.dataset_dir = Path(job.dataset_dir or "")
        script_dir = Path(job.kohya_dir or "")
        self.version = detect_base_model_version(job.config.base_model)
        if not (script_dir / SCRIPTS[self.version]).is_file():
            raise KohyaError(
                f"kohya sd-scripts not found: {script_dir / SCRIPTS[self.version]} does not exist "
                "(set the kohya scripts folder to a checkout of kohya-ss/sd-scripts)"
            )
        if not self.dataset_dir.is_dir():
            raise KohyaError(f"the dataset folder {self.dataset_dir} does not exist")
        config = resolve_config(
            job.config, len(job.examples), self.version, None, job.config.device
        )
        if config.save_every_n_epochs is None:
            config = replace(config, save_every_n_epochs=auto_save_every(config.epochs))
        self.config = config
        self.init_lora_hash = check_init_lora(config) if config.init_lora else ""
        self.commit = sd_scripts_commit(script_dir)
        self.offset = 0

    def _forget_finished_run(self) -> None:
        """A work folder whose run finished (or that holds kohya's final state, as runs before
        the marker left it) trains from the start again, and says so."""
        finished = self.work_dir / FINISHED_FILE
        final_state = self.work_dir / f"{OUTPUT_NAME}-state"
        if not finished.is_file() and not final_state.is_dir():
            return
        try:
            before = json.loads(finished.read_text("utf-8"))
        except (OSError, ValueError):
            before = {}
        what = f" ({before['steps']} steps, {before['file']})" if "steps" in before else ""
        self.reporter.log(
            f"dataset version {self.config.dataset_hash[:12]} was trained to the end before"
            f"{what}: training it again from the start, not on top of the finished LoRA"
        )
        clear_states(self.work_dir)
        finished.unlink(missing_ok=True)
        (self.work_dir / OFFSET_FILE).unlink(missing_ok=True)

    def _resume_point(self) -> Path | None:
        """The state to resume from, with the step counts of the states the previous process
        saved made global first; records this process's offset for the next one."""
        offset_file = self.work_dir / OFFSET_FILE
        try:
            previous = int(json.loads(offset_file.read_text("utf-8"))["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            previous = 0
        make_state_steps_global(self.work_dir, previous)
        resume = latest_state(self.work_dir)
        self.offset = state_step(resume) if resume is not None else 0
        offset_file.write_text(json.dumps({"offset": self.offset}), "utf-8")
        if resume is not None:
            self.reporter.log(
                f"resuming kohya from its saved state {resume.name} (step {self.offset})"
            )
        return resume

    def _prepare(self) -> list[str]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        folders = image_folders(self.dataset_dir)
        if not folders:
            raise KohyaError(f"no images in the dataset folder {self.dataset_dir}")
        buckets = bucket_settings(self.config.resolution, self.version, self.config.enable_bucket)
        if self.config.enable_bucket and not buckets["enable_bucket"]:
            self.reporter.log(
                f"aspect-ratio buckets off: kohya's smallest bucket is "
                f"{BUCKET_RESO_STEPS[self.version]} px, more than the resolution "
                f"{self.config.resolution}"
            )
        toml_file = self.work_dir / "dataset.toml"
        toml_file.write_text(dataset_toml(self.config, folders, self.version), "utf-8")
        if self.config.sample_prompts:
            (self.work_dir / "sample_prompts.txt").write_text(_sample_prompts(self.config), "utf-8")
        self._forget_finished_run()
        resume = self._resume_point()
        tokenizers = None
        if self.job.tokenizer_dir:
            try:
                tokenizers = tokenizer_cache(
                    Path(self.job.tokenizer_dir), self.version, self.work_dir / "tokenizers"
                )
            except ModelConfigError as error:
                raise KohyaError(str(error)) from error
        args = kohya_arguments(self.job, self.config, self.version, toml_file, resume, tokenizers)
        (self.work_dir / "command.json").write_text(json.dumps(args, indent=1), "utf-8")
        return args

    def run(self) -> TrainingResult:
        args = self._prepare()
        started_at = time.time()
        process = _KohyaProcess(args, Path(self.job.kohya_dir or "."))
        run = _KohyaRun(offset=self.offset)
        try:
            self._follow(process, run)
        finally:
            process.stop()
            make_state_steps_global(self.work_dir, self.offset)
        code = process.process.returncode
        if code != 0:
            tail = "\n".join(run.tail[-15:])
            # A signal leaves no error line: the signal is the reason (SIGKILL: most often OOM).
            oom = " (SIGKILL: most often the out-of-memory killer)" if code == -9 else ""
            reason = (
                f"killed by signal {-code}{oom}"
                if code < 0
                else f"failed (exit code {code}): {first_error_line(run.tail)}"
            )
            raise KohyaError(f"kohya {SCRIPTS[self.version]} {reason}\n{tail}")
        self._end_epoch(run)
        result = self._result(run, started_at)
        # Nothing of a finished run is resumed: the next run of this version trains afresh.
        clear_states(self.work_dir)
        (self.work_dir / OFFSET_FILE).unlink(missing_ok=True)
        finished = {"steps": result.steps, "file": result.path.name, "sha256": result.sha256}
        (self.work_dir / FINISHED_FILE).write_text(json.dumps(finished), "utf-8")
        return result

    def _follow(self, process: _KohyaProcess, run: _KohyaRun) -> None:
        while True:
            try:
                line = process.lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:
                process.process.wait()
                return
            if self.reporter.should_stop():
                process.stop()
                make_state_steps_global(self.work_dir, self.offset)
                raise TrainingInterrupted(run.step, latest_state(self.work_dir))
            if line:
                self._handle(line, run)

    def _handle(self, line: str, run: _KohyaRun) -> None:
        match = _PROGRESS.search(line)
        if match is not None:
            # stdout and stderr share one pipe: a log line can follow a bar with no newline.
            before, after = line[: match.start()].strip(), line[match.end() :].strip()
            if before:
                self._handle(before, run)
            progress = parse_progress(match.group(0))
            if progress is not None:
                self._progress(progress, run)
            if after:
                self._handle(after, run)
            return
        epoch = parse_epoch(line)
        if epoch is not None:
            if run.epoch:
                self._end_epoch(run)
            run.epoch, run.epochs = epoch
            run.epoch_started = time.perf_counter()
        else:
            run.tail = (run.tail + [line])[-50:]
            self.reporter.log(f"kohya: {line}")

    def _progress(self, progress: KohyaProgress, run: _KohyaRun) -> None:
        # After --resume kohya's bar restarts at 0 (its total stays the whole run's): the
        # global step is the resumed state's plus the bar's.
        step = run.offset + progress.step
        total = max(progress.total, step)
        if progress.step == 0 or step == run.step:
            run.total = total
            return
        run.step, run.total, run.trained = step, total, progress.step
        if progress.loss is not None:
            run.losses[step] = progress.loss
            run.epoch_losses.append(progress.loss)
        rate = progress.it_per_s or 0.0
        self.reporter.progress(
            TrainingProgress(
                step=step,
                total_steps=total,
                epoch=run.epoch,
                loss=progress.loss if progress.loss is not None else float("nan"),
                it_per_s=rate,
                eta_s=(total - step) / rate if rate else 0.0,
                lr=self.config.learning_rate,
            )
        )

    def _end_epoch(self, run: _KohyaRun) -> None:
        if not run.epoch:
            return
        epoch_files = sorted(self.work_dir.glob(f"{OUTPUT_NAME}-{run.epoch:06d}.safetensors"))
        for epoch_file in epoch_files:
            make_file_steps_global(epoch_file, self.offset)
        samples = sorted(
            str(p) for p in (self.work_dir / "sample").glob(f"{OUTPUT_NAME}_e{run.epoch:06d}_*.png")
        )
        self.reporter.epoch(
            EpochReport(
                epoch=run.epoch,
                epochs=run.epochs,
                step=run.step,
                total_steps=run.total,
                mean_loss=sum(run.epoch_losses) / max(len(run.epoch_losses), 1),
                seconds=time.perf_counter() - run.epoch_started,
                lora_path=str(epoch_files[0]) if epoch_files else None,
                sample_paths=samples,
                state_path=str(latest_state(self.work_dir) or "") or None,
            )
        )
        run.epoch, run.epoch_losses = 0, []

    def _result(self, run: _KohyaRun, started_at: float) -> TrainingResult:
        produced = self.work_dir / f"{OUTPUT_NAME}.safetensors"
        try:
            tensors, metadata = read_kohya_lora(produced)
        except LoraFormatError as error:
            raise KohyaError(f"kohya finished without a readable LoRA: {error}") from error
        weights = unet_weights_file_of(self.config.base_model)
        base_hash = sha256_and_legacy_hash(weights)[0] if weights else ""
        metadata = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
        # kohya's ss_steps counts from its restart after a resume: make it the whole run's.
        kohya_steps = _int(metadata.get("ss_steps")) or run.trained
        steps = self.offset + kohya_steps if kohya_steps else run.step
        metadata["ss_steps"] = str(steps)
        metadata.update(self._our_metadata(base_hash))
        sha256 = save_kohya_lora(self.job.output_file, tensors, metadata)
        losses = [run.losses[s] for s in sorted(run.losses)]
        return TrainingResult(
            path=self.job.output_file,
            sha256=sha256,
            steps=steps,
            epochs=int(metadata.get("ss_epoch", "0") or 0) or run.epochs,
            losses=losses,
            final_loss=losses[-1] if losses else float("nan"),
            seconds=time.time() - started_at,
            metadata=read_kohya_lora(self.job.output_file)[1],
            config=self.config.to_dict(),
            history=sorted(run.losses),
            resumed_from_step=self.offset,
            versions=self.versions(),
        )

    def versions(self) -> dict[str, str]:
        """What trained this LoRA: the project's version and the sd-scripts commit."""
        return {"lora_pipeline": package_version(), "sd_scripts": self.commit}

    def _our_metadata(self, base_hash: str) -> dict[str, str]:
        config = self.config
        values = {
            "lora_pipeline.dataset_hash": config.dataset_hash,
            "lora_pipeline.base_model_hash": base_hash,
            "lora_pipeline.version": package_version(),
            "lora_pipeline.backend": "kohya",
            "lora_pipeline.sd_scripts_commit": self.commit,
            "lora_pipeline.tag_frequency": json.dumps(
                tag_frequency([e.caption for e in self.job.examples])
            ),
        }
        if config.trigger_word:
            values["lora_pipeline.trigger_word"] = config.trigger_word
            values["modelspec.trigger_phrase"] = config.trigger_word
        if config.init_lora:
            values["lora_pipeline.init_lora"] = Path(config.init_lora).name
            if self.init_lora_hash:
                values["lora_pipeline.init_lora_model_hash"] = self.init_lora_hash
        return values


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")


def first_error_line(lines: list[str]) -> str:
    """The line of kohya's output that says what went wrong: the exception line of its
    traceback (`ZeroDivisionError: …`), else the first line mentioning an error, else the
    last line."""
    for line in lines:
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    for line in lines:
        if "error" in line.lower():
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def train_with_kohya(job: TrainingJob, reporter: TrainingReporter) -> TrainingResult:
    """Train `job` with kohya sd-scripts; the result is registered like the built-in one's."""
    return _KohyaTraining(job, reporter).run()
