"""Train a character's LoRA on a shot-split dataset and register it as a candidate release.

Two halves, so that the training itself can run in another process: `plan_character_training`
turns a dataset and the run's settings into a `TrainingJob`, and `register_trained_lora` takes
the job's result, copies the file into ComfyUI's loras folder and registers the candidate
release with every hyperparameter. In between, `job.run_job` trains (the Dagster asset runs it
in a child process, `pipes_entry`).

A retrain continues from the last release when the gate fails: if the character's latest release
failed its latest eval, the new LoRA starts from that release's weights (`init_lora`) and is
registered as its child (`parent_release_id`). Where that cannot work (the file is gone or
changed, another base checkpoint, another network shape asked for) it trains fresh and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.dataset.service import DatasetRef, training_examples
from lora_pipeline.evaluation.service import project_eval_spec
from lora_pipeline.generation.comfyui import copy_to_comfyui
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import LoraRelease
from lora_pipeline.training.data import TrainingExample
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.options import TrainingConfig
from lora_pipeline.training.reports import TrainingResult

Log = Callable[[str], None]
# Settings that shape the network: a run that asks for other values than the failed release's
# cannot start from its weights.
NETWORK_SETTINGS = ("rank", "alpha", "conv_rank", "conv_alpha", "train_text_encoder")


@dataclass(frozen=True)
class ReleaseRef:
    release_id: int
    character: str
    relpath: str
    sha256: str
    steps: int
    final_loss: float
    comfyui_copy: str | None
    parent_release_id: int | None = None


@dataclass(frozen=True)
class ParentRelease:
    """The release a retrain continues from, its LoRA file and the network settings it was
    trained with (a run that leaves them unset takes them: the weights only fit that network)."""

    release_id: int
    file: Path
    network: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KohyaSetup:
    """Where kohya sd-scripts lives, when the studio trains with it."""

    scripts_dir: Path
    python: str | None = None
    tokenizer_dir: Path | None = None


def _run_name(dataset: DatasetRef, parent_release_id: int | None) -> str:
    # A retrain of the same dataset must not overwrite the release it continues from.
    continued = f"-from{parent_release_id}" if parent_release_id is not None else ""
    return f"{dataset.version_hash[:12]}{continued}"


def lora_output_file(
    root: DataRoot, dataset: DatasetRef, parent_release_id: int | None = None
) -> Path:
    name = f"{dataset.character}-{_run_name(dataset, parent_release_id)}.safetensors"
    return root.dir("loras", dataset.character) / name


def free_output_file(
    session: Session, root: DataRoot, dataset: DatasetRef, character_id: int, parent: int | None
) -> Path:
    """The LoRA file of a new training of `dataset`: its usual name, or `-run2`, `-run3`, … when
    a release already owns that file (a rerun of a trained version must not overwrite the file
    an earlier release, perhaps the active one, was registered with). An interrupted run finds
    the same name again, since its release is registered only when it finishes."""
    first = lora_output_file(root, dataset, parent)
    taken = set(
        session.scalars(select(LoraRelease.path).where(LoraRelease.character_id == character_id))
    )
    candidate, number = first, 1
    while root.relative(candidate) in taken:
        number += 1
        candidate = first.with_name(f"{first.stem}-run{number}{first.suffix}")
    return candidate


def _why_not_continue(release: LoraRelease, config: TrainingConfig, file: Path) -> str | None:
    """Why a run with `config` cannot start from `release`'s weights; None when it can."""
    checkpoint = commands.checkpoint_key(config.base_model)
    if release.base_checkpoint and release.base_checkpoint != checkpoint:
        return f"it was trained on {release.base_checkpoint}, this run on {checkpoint}"
    recorded = release.hyperparameters or {}
    for name in NETWORK_SETTINGS:
        wanted = getattr(config, name)
        if wanted is not None and name in recorded and recorded[name] != wanted:
            return f"it has {name} {recorded[name]}, this run asks for {wanted}"
    if not file.is_file():
        return f"its file {release.path} is missing"
    if sha256_file(file) != release.sha256:
        return f"its file {release.path} changed since it was registered"
    return None


def failed_parent(
    session: Session,
    root: DataRoot,
    character_id: int,
    config: TrainingConfig,
    log: Log,
    scope: str = "project",
) -> ParentRelease | None:
    """The character's latest release of `scope` when its latest eval failed the gate and a
    run with `config` can start from its weights; None (with a note in `log` when it cannot).
    A character's own LoRA never continues from a shared baseline, nor the reverse."""
    release = queries.latest_release(session, character_id, scope)
    if release is None:
        return None
    evaluation = queries.latest_eval(session, release.id)
    if evaluation is None or evaluation.verdict != "fail":
        return None
    file = root.path(release.path)
    reason = _why_not_continue(release, config, file)
    if reason is not None:
        log(f"release {release.id} failed its gate, but training starts fresh: {reason}")
        return None
    log(f"release {release.id} failed its gate: training continues from {release.path}")
    recorded = release.hyperparameters or {}
    network = {name: recorded[name] for name in NETWORK_SETTINGS if name in recorded}
    return ParentRelease(release.id, file, network)


def plan_character_training(
    registry: Registry,
    root: DataRoot,
    dataset: DatasetRef,
    split_relpath: str,
    config: TrainingConfig,
    kohya: KohyaSetup | None = None,
    samples: bool = True,
    continue_from_failed: bool = True,
    log: Log = lambda _: None,
    scope: str = "project",
) -> TrainingJob:
    """The job that trains `dataset`: its images and captions, the output file, where resumable
    states go, and the eval prompts as sample prompts (rendered with the character's settings).
    With `continue_from_failed`, a character whose latest release failed the gate continues
    from it (see `failed_parent`)."""
    split_dir = root.path(split_relpath)
    examples = [TrainingExample(image, caption) for image, caption in training_examples(split_dir)]
    with registry.session() as session:
        character = commands.get_character(session, dataset.character)
        trigger, negative = character.trigger_word, character.negative_prompt or ""
        # Samples of each epoch show the eval grid's prompts, so they can be compared with it.
        eval_prompts = project_eval_spec(character).prompts
        steps, cfg, seed = character.steps, character.cfg, character.seed or 0
        parent = (
            failed_parent(session, root, character.id, config, log, scope)
            if continue_from_failed
            else None
        )
        parent_id = parent.release_id if parent else None
        output_file = free_output_file(session, root, dataset, character.id, parent_id)
    if output_file != lora_output_file(root, dataset, parent_id):
        log(
            f"dataset version {dataset.version_hash[:12]} was trained before: this training "
            f"writes {output_file.name}, the earlier releases keep their files"
        )
    if parent is not None:
        unset = {k: v for k, v in parent.network.items() if getattr(config, k) is None}
        config = replace(config, init_lora=str(parent.file), **unset)
    config = replace(
        config,
        trigger_word=trigger,
        dataset_hash=dataset.version_hash,
        title=config.title or dataset.character,
        state_dir=str(root.dir("training", dataset.character)),
        sample_prompts=tuple(eval_prompts) if samples else (),
        sample_negative_prompt=negative,
        sample_steps=steps,
        sample_cfg=cfg,
        sample_seed=seed,
    )
    if kohya is None:
        return TrainingJob(config, examples, output_file, parent_release_id=parent_id)
    return TrainingJob(
        config,
        examples,
        output_file,
        backend="kohya",
        kohya_dir=str(kohya.scripts_dir),
        kohya_python=kohya.python,
        dataset_dir=str(split_dir),
        tokenizer_dir=str(kohya.tokenizer_dir) if kohya.tokenizer_dir else None,
        work_dir=str(
            root.dir("training", dataset.character, f"kohya-{_run_name(dataset, parent_id)}")
        ),
        parent_release_id=parent_id,
    )


def register_trained_lora(
    registry: Registry,
    root: DataRoot,
    dataset: DatasetRef,
    job: TrainingJob,
    result: TrainingResult,
    comfyui_loras_dir: Path | None = None,
    scope: str = "project",
    run_id: str | None = None,
) -> ReleaseRef:
    """Copy the LoRA into ComfyUI's loras folder and register it as a candidate release of
    `scope` (project, or baseline: shared by every character on the checkpoint), trained by
    the Dagster run `run_id`."""
    comfy_copy = copy_to_comfyui(result.path, comfyui_loras_dir)
    sdxl = result.metadata.get("ss_base_model_version", "").startswith("sdxl")
    hyperparameters = {
        **(result.config or job.config.to_dict()),
        "steps": result.steps,
        "epochs": result.epochs,
        "backend": job.backend,
        "final_loss": result.final_loss,
        "resumed_from_step": result.resumed_from_step,
        # The project's version, its libraries' and (kohya) the sd-scripts commit.
        "versions": dict(result.versions),
        # The saved epochs the evaluation compares to pick the one to release.
        "epoch_files": [root.relative(Path(p)) for p in result.epoch_files],
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
            parent_release_id=job.parent_release_id,
            scope=scope,
            run_id=run_id,
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
        parent_release_id=job.parent_release_id,
    )
