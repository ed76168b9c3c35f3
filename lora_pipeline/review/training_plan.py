"""The Train tab's wizard (seed 003's beginner wizard, issue 15 item 4), step by step.

checkpoint (the project's generation profile) → dataset (approved images, filtered by tags and
asset type, all or any: the rule `lora-pipeline train --tag/--tag-any/--asset-type` applies) with
the image count and shot distribution → caption strategy with three captions previewed → preset
with its steps and estimated time → a `TrainingRequest`, queued by the same helper as `train`.
Each step that cannot go on says why in one line (`WizardPlan.problems`); nothing here talks to
Dagster or writes anything.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from lora_pipeline.config import Settings
from lora_pipeline.dataset.caption_strategies import (
    STRATEGY_PARTS,
    CaptionPlan,
    parse_strategy,
    preview_captions,
)
from lora_pipeline.dataset.selection import DatasetSelection, SelectionError
from lora_pipeline.dataset.shots import SHOT_TYPES, classify_shot
from lora_pipeline.errors import PipelineError, user_message
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.commands.images import ASSET_TYPE_PREFIX
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Image
from lora_pipeline.training.defaults import SmartDefaultsError, detect_base_model_version
from lora_pipeline.training.launch import (
    TrainingRequest,
    selected_images,
    shortfall,
    training_checkpoint,
)
from lora_pipeline.training.presets import (
    DEFAULT_PRESET,
    PRESETS,
    PresetError,
    PresetPlan,
    plan_preset,
    preset_named,
    seconds_per_step,
)

CAPTION_STRATEGIES = (
    "auto",
    *STRATEGY_PARTS,
    "design+tags",
    "design+vlm",
    "tags+vlm",
    "design+tags+vlm",
)
PREVIEW_COUNT = 3
STEPS = ("checkpoint", "dataset", "captions", "preset")
# (detector name, image sha256) -> shot type: a face is found once per picture and detector.
ShotCache = MutableMapping[tuple[str, str], str]


@dataclass(frozen=True)
class WizardChoice:
    """What the person chose so far, as the form sends it."""

    character: str = ""
    tags: str = ""  # comma-separated
    asset_type: str = ""
    match: str = "all"
    caption: str = "auto"
    preset: str = DEFAULT_PRESET

    @classmethod
    def from_form(cls, values: Any) -> WizardChoice:
        def text(name: str, default: str = "") -> str:
            value = values.get(name, default)
            return value.strip() if isinstance(value, str) else default

        return cls(
            character=text("character"),
            tags=text("tags"),
            asset_type=text("asset_type"),
            match=text("match", "all") or "all",
            caption=text("caption", "auto") or "auto",
            preset=text("preset", DEFAULT_PRESET) or DEFAULT_PRESET,
        )

    def tag_list(self) -> list[str]:
        tags = [tag.strip() for tag in self.tags.split(",") if tag.strip()]
        return tags + ([ASSET_TYPE_PREFIX + self.asset_type] if self.asset_type else [])


@dataclass
class WizardPlan:
    choice: WizardChoice
    characters: list[str] = field(default_factory=list)
    name: str = ""
    checkpoint: str | None = None
    profile: str | None = None
    asset_types: list[str] = field(default_factory=list)
    known_tags: list[str] = field(default_factory=list)
    selection: DatasetSelection | None = None
    count: int = 0
    shots: dict[str, int] = field(default_factory=dict)
    shots_note: str = ""
    captions: list[str] = field(default_factory=list)
    presets: list[PresetPlan] = field(default_factory=list)
    # step -> the one line that stops it; a step absent here is fine.
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.choice.character) and not self.problems

    @property
    def chosen_preset(self) -> PresetPlan | None:
        return next((p for p in self.presets if p.preset.name == self.choice.preset), None)

    def request(self, started_by: str) -> TrainingRequest:
        """The run to queue; only for a plan that is `ready`."""
        assert self.ready and self.selection is not None
        chosen = self.chosen_preset
        return TrainingRequest(
            self.choice.character,
            self.selection,
            dict(chosen.options) if chosen else {},
            caption_strategy=self.choice.caption,
            started_by=started_by,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "character": self.choice.character,
            "checkpoint": self.checkpoint,
            "profile": self.profile,
            "count": self.count,
            "selection": self.selection.record() if self.selection else None,
            "shots": self.shots,
            "shots_note": self.shots_note,
            "captions": self.captions,
            "presets": [_preset_json(p) for p in self.presets],
            "problems": self.problems,
            "ready": self.ready,
        }


def _preset_json(plan: PresetPlan) -> dict[str, Any]:
    return {
        "name": plan.preset.name,
        "label": plan.preset.label,
        "description": plan.preset.description,
        "epochs": plan.epochs,
        "steps": plan.steps,
        "estimate": estimate_text(plan.estimate_s),
    }


def estimate_text(seconds: float | None) -> str:
    if seconds is None:
        return "no estimate yet: no training has finished on this machine"
    minutes = seconds / 60
    if minutes < 1:
        return f"about {max(1, round(seconds))} s"
    if minutes < 90:
        return f"about {round(minutes)} min"
    return f"about {minutes / 60:.1f} h"


def plan_training(
    settings: Settings, registry: Registry, choice: WizardChoice, shot_cache: ShotCache
) -> WizardPlan:
    """Every step for the choice so far; the first step without a character is just the list."""
    plan = WizardPlan(choice)
    with registry.session(readonly=True) as session:
        plan.characters = [c.slug for c in queries.list_characters(session)]
        if not choice.character:
            return plan
        character = commands.get_character(session, choice.character)
        plan.name = character.name
        trigger, design = character.trigger_word, character.design_prompt
        project = character.project.slug
        approved = queries.approved_images(session, character.id)
        _known_tags(plan, approved)
        images = _select(plan, session, character.id)
        picked = [(image.sha256, image.path) for image in images]
    _checkpoint(plan, settings, registry)
    root = DataRoot(settings.data_root)
    if plan.selection is not None:
        problem = shortfall(choice.character, plan.count, plan.selection)
        if problem:
            plan.problems["dataset"] = problem
        _shots(plan, settings, root, picked, shot_cache)
    _captions(plan, settings, root, picked[:PREVIEW_COUNT], trigger, design, project)
    _presets(plan, settings)
    return plan


def _known_tags(plan: WizardPlan, approved: list[Image]) -> None:
    tags = {tag for image in approved for tag in commands.stored_tags(image)}
    plan.asset_types = sorted(
        {t[len(ASSET_TYPE_PREFIX) :] for t in tags if t.casefold().startswith(ASSET_TYPE_PREFIX)},
        key=str.casefold,
    )
    plan.known_tags = sorted(
        (t for t in tags if not t.casefold().startswith(ASSET_TYPE_PREFIX)), key=str.casefold
    )


def _select(plan: WizardPlan, session: Any, character_id: int) -> list[Image]:
    try:
        plan.selection = DatasetSelection(tuple(plan.choice.tag_list()), plan.choice.match)
    except SelectionError as error:
        plan.problems["dataset"] = str(error)
        return []
    images = selected_images(session, character_id, plan.selection)
    plan.count = len(images)
    return images


def _checkpoint(plan: WizardPlan, settings: Settings, registry: Registry) -> None:
    from lora_pipeline.generation.profiles import character_profile

    with registry.session(readonly=True) as session:
        profile = character_profile(session, commands.get_character(session, plan.choice.character))
    plan.profile = profile.name
    try:
        plan.checkpoint = training_checkpoint(settings, registry, plan.choice.character)
    except PipelineError as error:
        plan.problems["checkpoint"] = user_message(error)


def _open(root: DataRoot, relpath: str) -> Any:
    try:
        return load_image(root.path(relpath), name=relpath)
    except (InvalidImageError, UnsafePathError, OSError):
        return None


def _shots(
    plan: WizardPlan,
    settings: Settings,
    root: DataRoot,
    picked: list[tuple[str, str]],
    cache: ShotCache,
) -> None:
    """close / mid / far / unknown of the selected images, by the detector the dataset uses."""
    plan.shots = dict.fromkeys(SHOT_TYPES, 0)
    detector = None
    if settings.face_detector:
        from lora_pipeline.model_runtime import ModelRuntime

        try:
            detector = ModelRuntime(settings).face_detector()
        except PipelineError as error:
            plan.shots_note = f"face detector not loaded: {user_message(error)}"
    if detector is None:
        plan.shots["unknown"] = len(picked)
        plan.shots_note = plan.shots_note or (
            "no face detector configured (LORA_PIPELINE_FACE_DETECTOR): every shot is unknown, "
            "as the dataset's split will be"
        )
        return
    for sha256, relpath in picked:
        key = (detector.name, sha256)
        if key not in cache:
            image = _open(root, relpath)
            shot = classify_shot(*image.size, detector.detect(image)) if image else None
            cache[key] = shot.shot_type if shot else "unknown"
        plan.shots[cache[key]] += 1


def _captions(
    plan: WizardPlan,
    settings: Settings,
    root: DataRoot,
    picked: list[tuple[str, str]],
    trigger: str,
    design: str,
    project: str,
) -> None:
    from lora_pipeline.dataset.captions import CaptionError

    choice = plan.choice.caption
    if choice not in CAPTION_STRATEGIES:
        plan.problems["captions"] = (
            f"unknown caption strategy {choice!r}: choose {', '.join(CAPTION_STRATEGIES)}"
        )
        return
    try:
        strategy = parse_strategy(choice, tagger_available=bool(settings.tagger))
        tagger = captioner = None
        if "tags" in strategy or "vlm" in strategy:
            from lora_pipeline.model_runtime import ModelRuntime

            runtime = ModelRuntime(settings)
            tagger = runtime.tagger() if "tags" in strategy else None
            captioner = runtime.captioner(project) if "vlm" in strategy else None
        images = [image for _, path in picked if (image := _open(root, path)) is not None]
        caption_plan = CaptionPlan(strategy, design, tagger=tagger, captioner=captioner)
        plan.captions = preview_captions(images, trigger, caption_plan)
    except (CaptionError, PipelineError) as error:
        plan.problems["captions"] = user_message(error)


def _presets(plan: WizardPlan, settings: Settings) -> None:
    try:
        preset_named(plan.choice.preset)
    except PresetError as error:
        plan.problems["preset"] = str(error)
    try:
        version = detect_base_model_version(plan.checkpoint) if plan.checkpoint else "sd15"
    except SmartDefaultsError:
        version = "sd15"
    rate = seconds_per_step(settings.data_root)
    plan.presets = [plan_preset(p, plan.count, version, rate) for p in PRESETS.values()]
