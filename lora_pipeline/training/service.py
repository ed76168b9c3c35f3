"""Train a character's LoRA on a shot-split dataset and register it as a candidate release.

Two halves, so that the training itself can run in another process: `plan_character_training`
turns a dataset and the run's settings into a `TrainingJob`, and `register_trained_lora` takes
the job's result, copies the file into ComfyUI's loras folder and registers the candidate
release with every hyperparameter. In between, `job.run_job` trains (the Dagster asset runs it
in a child process, `pipes_entry`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from lora_pipeline.dataset.service import DatasetRef, training_examples
from lora_pipeline.evaluation.service import eval_spec_for
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.trainer import TrainingConfig, TrainingExample, TrainingResult


@dataclass(frozen=True)
class ReleaseRef:
    release_id: int
    character: str
    relpath: str
    sha256: str
    steps: int
    final_loss: float
    comfyui_copy: str | None


@dataclass(frozen=True)
class KohyaSetup:
    """Where kohya sd-scripts lives, when the studio trains with it."""

    scripts_dir: Path
    python: str | None = None
    tokenizer_dir: Path | None = None


def lora_output_file(root: DataRoot, dataset: DatasetRef) -> Path:
    return root.dir("loras", dataset.character) / (
        f"{dataset.character}-{dataset.version_hash[:12]}.safetensors"
    )


def plan_character_training(
    registry: Registry,
    root: DataRoot,
    dataset: DatasetRef,
    split_relpath: str,
    config: TrainingConfig,
    kohya: KohyaSetup | None = None,
    samples: bool = True,
) -> TrainingJob:
    """The job that trains `dataset`: its images and captions, the output file, where resumable
    states go, and the eval prompts as sample prompts (rendered with the character's settings)."""
    split_dir = root.path(split_relpath)
    examples = [TrainingExample(image, caption) for image, caption in training_examples(split_dir)]
    with registry.session() as session:
        character = commands.get_character(session, dataset.character)
        trigger, negative = character.trigger_word, character.negative_prompt or ""
        steps, cfg, seed = character.steps, character.cfg, character.seed or 0
    config = replace(
        config,
        trigger_word=trigger,
        dataset_hash=dataset.version_hash,
        title=config.title or dataset.character,
        state_dir=str(root.dir("training", dataset.character)),
        sample_prompts=tuple(eval_spec_for(trigger).prompts) if samples else (),
        sample_negative_prompt=negative,
        sample_steps=steps,
        sample_cfg=cfg,
        sample_seed=seed,
    )
    output_file = lora_output_file(root, dataset)
    if kohya is None:
        return TrainingJob(config, examples, output_file)
    return TrainingJob(
        config,
        examples,
        output_file,
        backend="kohya",
        kohya_dir=str(kohya.scripts_dir),
        kohya_python=kohya.python,
        dataset_dir=str(split_dir),
        tokenizer_dir=str(kohya.tokenizer_dir) if kohya.tokenizer_dir else None,
        work_dir=str(root.dir("training", dataset.character, f"kohya-{dataset.version_hash[:12]}")),
    )


def register_trained_lora(
    registry: Registry,
    root: DataRoot,
    dataset: DatasetRef,
    job: TrainingJob,
    result: TrainingResult,
    comfyui_loras_dir: Path | None = None,
) -> ReleaseRef:
    """Copy the LoRA into ComfyUI's loras folder and register it as a candidate release."""
    comfy_copy = _copy_to_comfyui(result.path, comfyui_loras_dir)
    sdxl = result.metadata.get("ss_base_model_version", "").startswith("sdxl")
    hyperparameters = {
        **(result.config or job.config.to_dict()),
        "steps": result.steps,
        "epochs": result.epochs,
        "backend": job.backend,
        "final_loss": result.final_loss,
        "resumed_from_step": result.resumed_from_step,
    }
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
            job.config.base_model,
            hyperparameters=hyperparameters,
            base_model_version="sdxl" if sdxl else "sd15",
        )
        release_id = release.id
    return ReleaseRef(
        release_id=release_id,
        character=dataset.character,
        relpath=root.relative(result.path),
        sha256=result.sha256,
        steps=result.steps,
        final_loss=result.final_loss,
        comfyui_copy=str(comfy_copy) if comfy_copy else None,
    )


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
