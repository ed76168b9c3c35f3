"""Train a character's LoRA on a shot-split dataset and register it as a candidate release."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_pipeline.dataset.service import DatasetRef, training_examples
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.training.trainer import (
    TrainingConfig,
    TrainingExample,
    TrainingProgress,
    TrainingResult,
    train_lora,
)


@dataclass(frozen=True)
class ReleaseRef:
    release_id: int
    character: str
    relpath: str
    sha256: str
    steps: int
    final_loss: float
    comfyui_copy: str | None


def train_character_lora(
    registry: Registry,
    root: DataRoot,
    dataset: DatasetRef,
    split_relpath: str,
    config: TrainingConfig,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    comfyui_loras_dir: Path | None = None,
) -> tuple[ReleaseRef, TrainingResult]:
    examples = [
        TrainingExample(image, caption)
        for image, caption in training_examples(root.path(split_relpath))
    ]
    with registry.session() as session:
        character = commands.get_character(session, dataset.character)
        trigger = character.trigger_word
    out_dir = root.dir("loras", dataset.character)
    output_file = out_dir / f"{dataset.character}-{dataset.version_hash[:12]}.safetensors"
    config = TrainingConfig(
        **(asdict(config) | {"trigger_word": trigger, "dataset_hash": dataset.version_hash})
    )
    result = train_lora(config, examples, output_file, on_progress)
    comfy_copy = _copy_to_comfyui(result.path, comfyui_loras_dir)
    with registry.session() as session:
        character = commands.get_character(session, dataset.character)
        version = queries.latest_dataset_version(session, character.id)
        version_id = (
            version.id if version and version.version_hash == dataset.version_hash else None
        )
        release = commands.register_lora_release(
            session,
            character.id,
            version_id,
            root.relative(result.path),
            result.sha256,
            config.base_model,
            hyperparameters=asdict(config) | {"steps": result.steps, "epochs": result.epochs},
        )
        release_id = release.id
    ref = ReleaseRef(
        release_id=release_id,
        character=dataset.character,
        relpath=root.relative(result.path),
        sha256=result.sha256,
        steps=result.steps,
        final_loss=result.final_loss,
        comfyui_copy=str(comfy_copy) if comfy_copy else None,
    )
    return ref, result


def _copy_to_comfyui(lora: Path, loras_dir: Path | None) -> Path | None:
    """ComfyUI's LoraLoader lists the files of its loras folder; put the new LoRA there."""
    if loras_dir is None:
        return None
    loras_dir.mkdir(parents=True, exist_ok=True)
    target = loras_dir / lora.name
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(lora, tmp)
    tmp.replace(target)
    return target
