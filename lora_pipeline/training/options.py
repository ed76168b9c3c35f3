"""The training options, declared once: each with its type, default, one line of help and limit.

`TrainingConfig` is everything a run trains with; `RunOptions` is how the pipeline runs it (the
backend, sample images, continuing a failed release, the release's scope). The options a user
sets per run are RunOptions and the TrainingConfig fields marked `launchpad`: `defs/training.py`
builds the Dagster run config from `launchpad_options()`, so adding an option is one edit here.

Limits are checked in one place, `option_problems`: by the Dagster asset before it spends time on
the GPU (for either backend), and by the built-in trainer before it loads the model and again once
the smart defaults filled the unset values. A config is not checked when it is built, so that a
run can report every problem at once, in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple, get_type_hints

from lora_pipeline.registry.models import RELEASE_SCOPES
from lora_pipeline.training.defaults import smart_defaults
from lora_pipeline.training.errors import TrainingError

OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULERS = ("constant", "cosine")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# The backends a job trains with; a run config may also say "auto".
BACKENDS = ("builtin", "kohya")
# Epoch files (with their samples and resumable states) saved over a run when the run config
# does not say how often: a crash loses at most a fifth of the run.
SAVES_PER_RUN = 5
# Settings that smart defaults fill when the run config leaves them unset (seed 002's table).
SMART_FIELDS = ("epochs", "batch_size", "learning_rate", "rank", "alpha", "resolution")


@dataclass(frozen=True)
class Rule:
    """A limit on one option: `holds(value)` for an acceptable value; `says` completes
    "<option> must …". Unset (None) values are not checked: the smart defaults fill them."""

    holds: Callable[[Any], bool]
    says: str


def at_least(bound: int) -> Rule:
    return Rule(lambda value: value >= bound, f"be at least {bound}")


def one_of(*choices: str) -> Rule:
    return Rule(lambda value: value in choices, f"be one of {', '.join(choices)}")


POSITIVE = Rule(lambda value: value > 0, "be positive")
NOT_NEGATIVE = Rule(lambda value: value >= 0, "not be negative")
# Latents are an eighth of the image size: a resolution that is no multiple of 8 cannot be encoded.
MULTIPLE_OF_8 = Rule(lambda value: value >= 8 and value % 8 == 0, "be a multiple of 8")


def option(
    default: Any = MISSING,
    description: str = "",
    rule: Rule | None = None,
    *,
    launchpad: bool = False,
    trains: bool = True,
) -> Any:
    """A declared option: a dataclass field whose metadata holds its help, its limit, whether
    users set it per run (`launchpad`), and whether it changes what is trained (`trains`: a
    resumable state saved under another value of an option that does not is still resumed)."""
    metadata = {"help": description, "rule": rule, "launchpad": launchpad, "trains": trains}
    return field(default=default, metadata=metadata)


def per_run(
    default: Any, description: str, rule: Rule | None = None, *, trains: bool = True
) -> Any:
    """An option users set per run, on the Dagster launchpad."""
    return option(default, description, rule, launchpad=True, trains=trains)


@dataclass
class TrainingConfig:
    base_model: str = option(description="a diffusers folder, a single-file checkpoint or a hub id")
    # None: the smart default for the image count and base model (seed 002's table); the
    # resolution default is the model's native one (512 for SD1.5, 1024 for SDXL).
    rank: int | None = per_run(None, "LoRA rank (network dim); unset: 32", at_least(1))
    alpha: float | None = per_run(None, "LoRA alpha (weight scale alpha/rank); unset: 16", POSITIVE)
    learning_rate: float | None = per_run(None, "learning rate; unset: 1e-4", POSITIVE)
    epochs: int | None = per_run(None, "passes over the images; unset: by image count", at_least(1))
    batch_size: int | None = per_run(None, "images per step; unset: by image count", at_least(1))
    resolution: int | None = per_run(
        None, "training size in pixels; unset: the model's native one", MULTIPLE_OF_8
    )
    max_steps: int | None = per_run(None, "stop after this many steps; unset: epochs", at_least(1))
    seed: int = per_run(0, "seed of the adapters' initial weights, the noise and the batches")
    device: str = option("auto", "cuda, cpu, or auto (cuda when available)", trains=False)
    mixed_precision: str = per_run(
        "auto",
        "no, fp16 or bf16; auto: bf16 (or fp16) on CUDA, none on the CPU",
        one_of("auto", *MIXED_PRECISIONS),
    )
    gradient_checkpointing: bool = per_run(False, "recompute activations: less memory, slower")
    train_text_encoder: bool = per_run(False, "train LoRA adapters on the text encoder(s) too")
    text_encoder_lr: float | None = per_run(
        None, "the text encoder's learning rate; unset: the learning rate", POSITIVE
    )
    conv_rank: int = per_run(
        0, "LoCon: LoRA rank on the 3×3 convolutions too (kohya's conv_dim); 0: none", NOT_NEGATIVE
    )
    conv_alpha: float | None = per_run(None, "LoCon alpha; unset: 1, kohya's default")
    optimizer: str = per_run("adamw", "adamw or adamw8bit (bitsandbytes)", one_of(*OPTIMIZERS))
    weight_decay: float = option(0.01, "AdamW weight decay")
    lr_scheduler: str = per_run("constant", "constant or cosine", one_of(*LR_SCHEDULERS))
    lr_warmup_steps: int = per_run(0, "steps of linear warm-up to the learning rate", NOT_NEGATIVE)
    enable_bucket: bool = per_run(True, "train each image at its aspect ratio (buckets)")
    shuffle_caption: bool = per_run(False, "shuffle caption tags at each step")
    keep_tokens: int = per_run(
        1, "leading tags kept in place when shuffling (the trigger word stays first)", NOT_NEGATIVE
    )
    noise_offset: float = per_run(
        0.0, "per-channel noise shift: learns very dark and bright images", NOT_NEGATIVE
    )
    min_snr_gamma: float | None = per_run(
        None, "Min-SNR loss weighting gamma (5 is usual); unset: off", POSITIVE
    )
    cache_latents: bool = option(True, "encode the images once, before the first step")
    save_every_n_epochs: int | None = per_run(
        None,
        f"save a LoRA file every N epochs; unset: about {SAVES_PER_RUN} over the run",
        at_least(1),
        trains=False,
    )
    keep_last_n_epochs: int = per_run(
        2, "saved epoch files (and states) kept", at_least(1), trains=False
    )
    sample_prompts: tuple[str, ...] = option((), "prompts rendered at each save", trains=False)
    sample_negative_prompt: str = option("", "negative prompt of the samples", trains=False)
    sample_steps: int = option(20, "sampling steps of the samples", at_least(1), trains=False)
    sample_cfg: float = option(7.0, "guidance scale of the samples", trains=False)
    sample_seed: int = option(0, "seed of the first sample (the next ones count up)", trains=False)
    trigger_word: str = option("", "the character's trigger word, for the file's metadata")
    dataset_hash: str = option("", "the dataset version hash, for the file's metadata")
    title: str = option("", "the LoRA's title; empty: the file name", trains=False)
    state_dir: str | None = option(None, "the resumable states' folder; unset: none", trains=False)
    single_file_config: str | None = option(
        None, "diffusers config folder for a single-file checkpoint", trains=False
    )
    init_lora: str | None = option(
        None, "a kohya LoRA file to start from (same rank, base model and modules); unset: fresh"
    )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["sample_prompts"] = list(self.sample_prompts)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"unknown training settings: {', '.join(unknown)}")
        values = dict(values)
        values["sample_prompts"] = tuple(values.get("sample_prompts") or ())
        return cls(**values)


@dataclass(frozen=True)
class RunOptions:
    """How the pipeline runs a training, beside what it trains with."""

    samples: bool = per_run(True, "render the eval prompts at each saved epoch")
    backend: str = per_run(
        "auto",
        "builtin or kohya; auto: kohya when a kohya sd-scripts folder is configured",
        one_of("auto", *BACKENDS),
    )
    continue_from_failed: bool = per_run(
        True, "when the character's latest release failed its gate, start from its weights"
    )
    # "baseline": a shared LoRA (a style, a category) that, once active, goes under every
    # character's LoRA on the same checkpoint (seed 003).
    scope: str = per_run(
        "project",
        "project: the character's own LoRA; baseline: one shared by every character",
        one_of(*RELEASE_SCOPES),
    )


class OptionSpec(NamedTuple):
    """One option as a run config shows it."""

    name: str
    annotation: Any
    default: Any
    description: str


def _specs(cls: type, only_launchpad: bool) -> list[OptionSpec]:
    types = get_type_hints(cls)
    return [
        OptionSpec(f.name, types[f.name], f.default, f.metadata["help"])
        for f in fields(cls)
        if f.metadata["launchpad"] or not only_launchpad
    ]


def launchpad_options() -> list[OptionSpec]:
    """The options users set per run: TrainingConfig's launchpad fields, then RunOptions."""
    return _specs(TrainingConfig, only_launchpad=True) + _specs(RunOptions, only_launchpad=True)


def split_launchpad(values: Mapping[str, Any]) -> tuple[dict[str, Any], RunOptions]:
    """A run config's values as TrainingConfig settings and RunOptions."""
    run_names = {f.name for f in fields(RunOptions)}
    settings = {k: v for k, v in values.items() if k not in run_names}
    run = RunOptions(**{k: v for k, v in values.items() if k in run_names})
    return settings, run


def fingerprinted(config: TrainingConfig) -> dict[str, Any]:
    """The settings that change what is trained: a saved state resumes only under the same."""
    trains = {f.name for f in fields(config) if f.metadata["trains"]}
    return {k: v for k, v in config.to_dict().items() if k in trains}


# --- limits ---------------------------------------------------------------------------------------


def _field_problem(options: object, declared: Field) -> str | None:
    rule: Rule | None = declared.metadata["rule"]
    value = getattr(options, declared.name)
    if rule is None or value is None or rule.holds(value):
        return None
    return f"{declared.name} must {rule.says} (got {value!r})"


def option_problems(options: TrainingConfig | RunOptions, device: str | None = None) -> list[str]:
    """Every option outside its limits, one short sentence each, in declaration order; with the
    `device` the run trains on, a precision the device cannot run too."""
    problems = [p for f in fields(options) if (p := _field_problem(options, f)) is not None]
    if isinstance(options, TrainingConfig) and device is not None:
        problems += _device_problems(options.mixed_precision, device)
    return problems


def _device_problems(precision: str, device: str) -> list[str]:
    if precision == "fp16" and not device.startswith("cuda"):
        return ["fp16 mixed precision needs a CUDA device; use 'no' or 'bf16'"]
    return []


def check_config(config: TrainingConfig, device: str) -> None:
    """TrainingError naming every problem of `config` on `device`, in one line."""
    problems = option_problems(config, device)
    if problems:
        raise TrainingError("cannot train: " + "; ".join(problems))


# --- resolving unset values -----------------------------------------------------------------------


def auto_mixed_precision(device: str) -> str:
    if not device.startswith("cuda"):
        return "no"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def auto_save_every(epochs: int) -> int:
    return max(1, math.ceil(epochs / SAVES_PER_RUN))


def resolve_config(
    config: TrainingConfig,
    image_count: int,
    base_model_version: str,
    native_resolution: int | None,
    device: str,
) -> TrainingConfig:
    """`config` with every unset value filled: smart defaults, precision, LoCon and TE settings."""
    defaults = smart_defaults(image_count, base_model_version)
    if native_resolution:
        # seed 002's 512 / 1024 are SD1.5's and SDXL's native sizes; a model trains best at its
        # own (SD2-768 at 768, a tiny test model at its few pixels).
        defaults["resolution"] = native_resolution
    filled: dict[str, Any] = {
        name: defaults[name] for name in SMART_FIELDS if getattr(config, name) is None
    }
    if config.mixed_precision == "auto":
        filled["mixed_precision"] = auto_mixed_precision(device)
    if config.conv_alpha is None:
        filled["conv_alpha"] = 1.0
    learning_rate = filled.get("learning_rate", config.learning_rate)
    if config.text_encoder_lr is None:
        filled["text_encoder_lr"] = learning_rate
    return replace(config, device=device, **filled)
