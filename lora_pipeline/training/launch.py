"""A training started by hand: what `lora-pipeline train` and the review app's Train tab ask for.

`TrainingRequest` is the one description of such a run (the character, seed 003's dataset rule,
the caption strategy, the trainer's options, who asked) and `run_config` its Dagster run config;
`check_can_train` refuses, in one line, what could not train, before anything is queued. The
queueing itself (`cli.runs.submit_training`) needs Dagster, so the review app is handed it as a
`TrainingSubmitter` by `lora-pipeline review` and never imports Dagster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from lora_pipeline.config import Settings
from lora_pipeline.dataset.quality import MIN_APPROVED_IMAGES
from lora_pipeline.dataset.selection import DatasetSelection, image_tags
from lora_pipeline.errors import PipelineError
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Image

TRAINING_JOB = "training_job"


class TrainingRequestError(PipelineError, ValueError):
    """A training that cannot be queued as asked; the message says why in one line."""


@dataclass(frozen=True)
class TrainingRequest:
    character: str
    selection: DatasetSelection = DatasetSelection()
    # trained_lora's launchpad options (epochs, rank, …); unset ones take the smart defaults.
    options: Mapping[str, Any] = field(default_factory=dict)
    # The captions asset's strategy (`design+tags`, …); None: LORA_PIPELINE_CAPTION_STRATEGY.
    caption_strategy: str | None = None
    started_by: str = ""

    def run_config(self) -> dict[str, Any]:
        ops: dict[str, Any] = {
            "trained_lora": {"config": dict(self.options)},
            "approved_dataset": {
                "config": {"tags": list(self.selection.tags), "tag_match": self.selection.match}
            },
        }
        if self.caption_strategy:
            ops["captions"] = {"config": {"strategy": self.caption_strategy}}
        return {"ops": ops}

    def tags(self) -> dict[str, str]:
        return {"lora_pipeline/started_by": self.started_by} if self.started_by else {}


# Puts a request in the Dagster instance's queue; returns the run id.
TrainingSubmitter = Callable[[TrainingRequest], str]


def selected_images(
    session: Session, character_id: int, selection: DatasetSelection
) -> list[Image]:
    """The character's approved images the rule accepts: what the dataset version will hold."""
    return [
        image
        for image in queries.approved_images(session, character_id)
        if selection.accepts(image_tags(image.provenance or {}, image.origin))
    ]


def shortfall(slug: str, count: int, selection: DatasetSelection) -> str | None:
    """The one line refusing a dataset too small to train; None when it is large enough."""
    if count >= MIN_APPROVED_IMAGES:
        return None
    rule = f" matching {', '.join(selection.tags)}" if selection.tags else ""
    return (
        f"{slug} has {count}/{MIN_APPROVED_IMAGES} approved images{rule}: approve more first "
        "(`lora-pipeline review list`, or the Approve tab)"
    )


def training_checkpoint(settings: Settings, registry: Registry, slug: str) -> str:
    """The checkpoint the character trains on: its project profile's, else the configured one;
    neither: one line saying how to set one."""
    from lora_pipeline.model_runtime import ModelRuntime  # loads the model stack's modules

    return ModelRuntime(settings).for_character(slug, registry).base_model_id()


def check_can_train(settings: Settings, registry: Registry, request: TrainingRequest) -> str:
    """The prerequisites, each refused in one line before anything is queued; returns the
    checkpoint the run will train on."""
    with registry.session(readonly=True) as session:
        character = commands.get_character(session, request.character)
        count = len(selected_images(session, character.id, request.selection))
    problem = shortfall(request.character, count, request.selection)
    if problem:
        raise TrainingRequestError(problem)
    return training_checkpoint(settings, registry, request.character)
