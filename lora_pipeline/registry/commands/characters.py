"""Commands on characters: adding one, its design prompt and its generation settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_pipeline.generation_settings import check_settings
from lora_pipeline.registry.commands._rows import _try_insert
from lora_pipeline.registry.commands._validate import (
    _text,
    validate_slug,
    validate_trigger_word,
)
from lora_pipeline.registry.commands.projects import get_project
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import Character

CHARACTER_SETTINGS = ("seed", "cfg", "steps", "sampler", "scheduler", "width", "height")


def get_character(session: Session, slug: str) -> Character:
    character = session.scalar(select(Character).where(Character.slug == slug))
    if character is None:
        raise NotFoundError(f"unknown character {slug!r}")
    return character


def _character_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(CHARACTER_SETTINGS))
    if unknown:
        raise InvalidInputError(
            f"unknown character setting {', '.join(unknown)}: valid are "
            f"{', '.join(CHARACTER_SETTINGS)}"
        )
    # The limits every generation path shares (a seed of None: a fresh one per run).
    return check_settings(settings, error=InvalidInputError)


def _locked_seed(locked: object, seed: object) -> bool:
    if not isinstance(locked, bool):
        raise InvalidInputError(f"seed lock must be true or false, got {locked!r}")
    if locked and seed is None:
        raise InvalidInputError("a locked seed needs a seed: pass one")
    return locked


def _trigger_word_for(slug: str, trigger_word: str | None) -> str:
    if trigger_word is not None:
        return validate_trigger_word(trigger_word)
    try:
        return validate_trigger_word(slug.replace("-", "_"))
    except InvalidInputError as error:
        raise InvalidInputError(f"{error} (derived from the slug: pass a trigger word)") from None


def add_character(
    session: Session,
    project_slug: str,
    slug: str,
    name: str,
    design_prompt: str = "",
    trigger_word: str | None = None,
    negative_prompt: str = "",
    seed_locked: bool = False,
    **settings: Any,
) -> Character:
    """Add a character; its trigger word defaults to the slug with '-' replaced by '_'.
    `seed_locked`: every image uses its seed (counting up within a request) instead of a
    fresh random one."""
    project = get_project(session, project_slug)
    validate_slug(slug, "character slug")
    trigger = _trigger_word_for(slug, trigger_word)
    character = Character(
        project_id=project.id,
        slug=slug,
        name=_text(name, "character name", required=True, max_length=200),
        trigger_word=trigger,
        design_prompt=_text(design_prompt, "design prompt"),
        negative_prompt=_text(negative_prompt, "negative prompt"),
        seed_locked=_locked_seed(seed_locked, settings.get("seed")),
        **_character_settings(settings),
    )
    existing = session.scalar(select(Character).where(Character.slug == slug))
    if existing is not None:
        raise ConflictError(f"character {slug!r} already exists")
    owner = session.scalar(select(Character.slug).where(Character.trigger_word == trigger))
    if owner is not None:
        raise ConflictError(f"trigger word {trigger!r} is already used by character {owner!r}")
    if not _try_insert(session, character):
        raise ConflictError(
            f"character {slug!r} or trigger word {trigger!r} was added at the same time by "
            "someone else"
        )
    return character


def update_design_prompt(session: Session, character_slug: str, prompt: str) -> Character:
    character = get_character(session, character_slug)
    character.design_prompt = _text(prompt, "design prompt", required=True)
    session.flush()
    return character


def update_character(
    session: Session,
    character_slug: str,
    *,
    name: str | None = None,
    design_prompt: str | None = None,
    negative_prompt: str | None = None,
    trigger_word: str | None = None,
    seed_locked: bool | None = None,
    **settings: Any,
) -> Character:
    """Change what is given (None: keep it): the texts, the trigger word (unique), the seed
    lock and the generation settings (seed, cfg, steps, sampler, scheduler, width, height).
    The next generation and training use the new values."""
    character = get_character(session, character_slug)
    checked = _character_settings(settings)
    if name is not None:
        character.name = _text(name, "character name", required=True, max_length=200)
    if design_prompt is not None:
        character.design_prompt = _text(design_prompt, "design prompt")
    if negative_prompt is not None:
        character.negative_prompt = _text(negative_prompt, "negative prompt")
    if trigger_word is not None:
        character.trigger_word = _free_trigger_word(session, character, trigger_word)
    for setting, value in checked.items():
        setattr(character, setting, value)
    if seed_locked is not None:
        character.seed_locked = _locked_seed(seed_locked, character.seed)
    session.flush()
    return character


def _free_trigger_word(session: Session, character: Character, trigger_word: str) -> str:
    trigger = validate_trigger_word(trigger_word)
    owner = session.scalar(
        select(Character.slug).where(
            Character.trigger_word == trigger, Character.id != character.id
        )
    )
    if owner is not None:
        raise ConflictError(f"trigger word {trigger!r} is already used by character {owner!r}")
    return trigger
