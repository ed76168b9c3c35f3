"""The experiment log of a training: one JSON file beside the LoRA (`<lora>.experiment.json`).

What a studio needs to compare or reproduce a training without the registry: the resolved config,
the dataset version's hash, the versions of what trained it (the project, its libraries, the
sd-scripts commit), the loss of every step, and how the run went (steps, epochs, resumes). Both
backends get one, written by `backends.run_job` once the LoRA file is saved.
"""

from __future__ import annotations

import json
import math
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from lora_pipeline.files import atomic_path
from lora_pipeline.training.reports import TrainingResult

EXPERIMENT_SUFFIX = ".experiment.json"


def library_versions(*distributions: str) -> dict[str, str]:
    """The installed version of each distribution ("unknown" when it is not installed)."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def experiment_log_path(lora_file: Path) -> Path:
    return Path(lora_file).with_name(Path(lora_file).stem + EXPERIMENT_SUFFIX)


def _number(value: float) -> float | None:
    # JSON has no NaN: an unknown loss is null.
    return None if math.isnan(value) or math.isinf(value) else round(value, 6)


def experiment_log(backend: str, result: TrainingResult, command: list[str] | None) -> dict:
    """The log's content for a finished training of `backend`."""
    config: dict[str, Any] = dict(result.config)
    steps = result.history if len(result.history) == len(result.losses) else []
    losses = (
        [[step, _number(loss)] for step, loss in zip(steps, result.losses, strict=True)]
        if steps
        else [[None, _number(loss)] for loss in result.losses]
    )
    return {
        "lora_file": result.path.name,
        "sha256": result.sha256,
        "backend": backend,
        "dataset_hash": config.get("dataset_hash", ""),
        "base_model": config.get("base_model", ""),
        "versions": dict(result.versions),
        "config": config,
        "steps": result.steps,
        "epochs": result.epochs,
        "resumed_from_step": result.resumed_from_step,
        "seconds": round(result.seconds, 2),
        "final_loss": _number(result.final_loss),
        "session_id": result.metadata.get("ss_session_id", ""),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        # [global step, loss] of every step trained by the processes of this run.
        "losses": losses,
    }


def write_experiment_log(
    backend: str, result: TrainingResult, command: list[str] | None = None
) -> Path:
    """Write the experiment log beside the LoRA file; its path."""
    path = experiment_log_path(result.path)
    with atomic_path(path) as temporary:
        Path(temporary).write_text(
            json.dumps(experiment_log(backend, result, command), indent=1, default=str), "utf-8"
        )
    return path
