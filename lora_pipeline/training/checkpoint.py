"""Resumable training states: everything a run needs to continue exactly where it stopped.

A state is a folder `step-<global step>` holding the adapter weights, the optimizer, learning-rate
scheduler and loss-scaler states, the RNG state, the step and epoch counters and the loss of every
step so far. It is written beside its final place and renamed into it, so a crash while saving
leaves the previous state intact. Resuming from it gives the same next step as if the run had never
stopped: the step count carries on, and no step is trained twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_pipeline.files import atomic_folder

STATE_PREFIX = "step-"
PROGRESS_FILE = "progress.json"
WEIGHTS_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainingState:
    fingerprint: str
    global_step: int
    epoch: int  # the epoch the next step belongs to
    losses: list[float]
    history: list[int]  # the global step of every trained step, in order
    started_at: float
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    lr_scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: torch.Tensor | None = None


def fingerprint(values: Mapping[str, Any]) -> str:
    """A stable hash of the settings and data a state belongs to."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _state_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STATE_PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(STATE_PREFIX)))


def save_state(folder: Path, state: TrainingState, keep_last: int) -> Path:
    """Write `state` as `folder/step-N` atomically; keep only the newest `keep_last` states."""
    from safetensors.torch import save_file

    target = folder / f"{STATE_PREFIX}{state.global_step:08d}"
    with atomic_folder(target) as scratch:
        weights = {name: t.detach().cpu().contiguous() for name, t in state.weights.items()}
        save_file(weights, scratch / WEIGHTS_FILE)
        torch.save(
            {
                "optimizer": state.optimizer,
                "lr_scheduler": state.lr_scheduler,
                "scaler": state.scaler,
                "rng": state.rng,
            },
            scratch / OPTIMIZER_FILE,
        )
        progress = {
            "fingerprint": state.fingerprint,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "losses": state.losses,
            "history": state.history,
            "started_at": state.started_at,
        }
        (scratch / PROGRESS_FILE).write_text(json.dumps(progress), "utf-8")
    for old in _state_dirs(folder)[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_latest_state(folder: Path, expected_fingerprint: str) -> TrainingState | None:
    """The newest complete state of this run (same fingerprint), or None to start afresh."""
    from safetensors.torch import load_file

    for candidate in reversed(_state_dirs(folder)):
        progress_file = candidate / PROGRESS_FILE
        if not progress_file.is_file():
            continue
        progress = json.loads(progress_file.read_text("utf-8"))
        if progress.get("fingerprint") != expected_fingerprint:
            continue
        # weights_only: the file holds tensors, numbers and dicts; nothing to unpickle blindly.
        rest = torch.load(candidate / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        return TrainingState(
            fingerprint=progress["fingerprint"],
            global_step=int(progress["global_step"]),
            epoch=int(progress["epoch"]),
            losses=[float(x) for x in progress["losses"]],
            history=[int(x) for x in progress["history"]],
            started_at=float(progress["started_at"]),
            weights=load_file(candidate / WEIGHTS_FILE),
            optimizer=rest["optimizer"],
            lr_scheduler=rest["lr_scheduler"],
            scaler=rest["scaler"],
            rng=rest["rng"],
        )
    return None


def clear_states(folder: Path) -> None:
    """A finished run needs no resume state."""
    for state_dir in _state_dirs(folder):
        shutil.rmtree(state_dir, ignore_errors=True)
    for scratch in folder.glob(f".{STATE_PREFIX}*") if folder.is_dir() else []:
        shutil.rmtree(scratch, ignore_errors=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
