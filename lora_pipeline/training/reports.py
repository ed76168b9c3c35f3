"""What a training run reports, whichever backend trains: progress after each step, a report
per epoch, and the result. Plain data, so the training process can send it as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingProgress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    it_per_s: float
    eta_s: float
    lr: float = 0.0


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    mean_loss: float
    seconds: float
    lora_path: str | None = None
    sample_paths: list[str] = field(default_factory=list)
    state_path: str | None = None


@dataclass
class TrainingResult:
    path: Path
    sha256: str
    steps: int
    epochs: int
    losses: list[float]
    final_loss: float
    seconds: float
    metadata: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)  # every hyperparameter, resolved
    history: list[int] = field(default_factory=list)  # the global step of every trained step
    resumed_from_step: int = 0
    epoch_files: list[str] = field(default_factory=list)
    # What trained it: {"lora_pipeline": version, "sd_scripts": commit, "torch": …}.
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"path": str(self.path)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingResult:
        return cls(**(dict(values) | {"path": Path(values["path"])}))
