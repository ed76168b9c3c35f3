"""Training presets for the Train tab (seed 003's "simple defaults"): the smart defaults, or
fewer or more passes over the data, each with the steps it will take and an estimate of the time.

A preset sets only what it changes; everything else is left to the smart defaults the trainer
applies to the dataset it is given (training/defaults.py), so `standard` queues no option at all.
Steps follow the built-in trainer: epochs × batches per epoch, a batch of `batch_size` images.
The time is measured, never assumed: seconds per step of the last training that finished on this
machine (its status file), and no estimate before one has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_pipeline.errors import PipelineError
from lora_pipeline.training.defaults import smart_defaults
from lora_pipeline.training.status import STATUS_DIR, read_status


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    # Epochs as a share of the smart default (at least one).
    epoch_factor: float
    rank: int | None = None


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("quick", "Quick", "a first look: half the passes, a smaller network", 0.5, 16),
        Preset("standard", "Standard", "the smart defaults for this many images", 1.0),
        Preset("thorough", "Thorough", "half as many passes again, for a larger dataset", 1.5),
    )
}
DEFAULT_PRESET = "standard"


class PresetError(PipelineError, ValueError):
    pass


@dataclass(frozen=True)
class PresetPlan:
    preset: Preset
    # What the run config sets for trained_lora (the rest: smart defaults at run time).
    options: dict[str, Any]
    epochs: int
    batch_size: int
    steps: int
    # None: no training has finished here yet, so nothing to estimate from.
    estimate_s: float | None


def preset_named(name: str) -> Preset:
    preset = PRESETS.get((name or "").strip().lower())
    if preset is None:
        raise PresetError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
    return preset


def plan_preset(
    preset: Preset,
    image_count: int,
    base_model_version: str = "sd15",
    seconds_per_step: float | None = None,
) -> PresetPlan:
    defaults = smart_defaults(image_count, base_model_version)
    epochs = max(1, round(defaults["epochs"] * preset.epoch_factor))
    options: dict[str, Any] = {}
    if epochs != defaults["epochs"]:
        options["epochs"] = epochs
    if preset.rank is not None and preset.rank != defaults["rank"]:
        options["rank"] = preset.rank
    batch = defaults["batch_size"]
    steps = epochs * math.ceil(image_count / batch) if image_count else 0
    estimate = steps * seconds_per_step if seconds_per_step is not None else None
    return PresetPlan(preset, options, epochs, batch, steps, estimate)


def seconds_per_step(data_root: Path) -> float | None:
    """Seconds per step of the newest finished training in the data root's status files (the
    whole run, model loading included, pauses left out); None when none has finished."""
    best: tuple[datetime, float] | None = None
    for path in sorted((Path(data_root) / STATUS_DIR).glob("*/training.json")):
        status = read_status(path) or {}
        rate = _rate(status)
        if rate is None:
            continue
        finished = datetime.fromisoformat(str(status["updated_at"]))
        if best is None or finished > best[0]:
            best = (finished, rate)
    return best[1] if best else None


def _rate(status: dict[str, Any]) -> float | None:
    steps = status.get("total_steps")
    if status.get("state") != "trained" or not isinstance(steps, int) or steps <= 0:
        return None
    try:
        started = datetime.fromisoformat(str(status["started_at"]))
        finished = datetime.fromisoformat(str(status["updated_at"]))
    except (KeyError, ValueError):
        return None
    seconds = (finished - started).total_seconds() - float(status.get("paused_s") or 0.0)
    return seconds / steps if seconds > 0 else None
