"""Prompt suggestions: a refined design prompt proposed after repeated rejections.

A character has at most one `open` suggestion: a newer one supersedes it. Accepting one makes it
the character's design prompt in the same transaction, and only once, whatever the number of
reviewers clicking at the same time (conditional UPDATE, as for image decisions).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _get, _updated_rows
from lora_pipeline.registry.commands._validate import _text
from lora_pipeline.registry.errors import ConflictError
from lora_pipeline.registry.models import Character, Feedback, PromptSuggestion

SUGGESTION_STATUSES = ("open", "accepted", "dismissed", "superseded")


def add_prompt_suggestion(
    session: Session, character_id: int, suggested_prompt: str, rationale: str, advisor: str
) -> PromptSuggestion:
    """Record an open suggestion for the character, superseding its previous open one."""
    character = _get(session, Character, character_id, "character")
    suggestion = PromptSuggestion(
        character_id=character.id,
        suggested_prompt=_text(suggested_prompt, "suggested prompt", required=True),
        rationale=_text(rationale, "rationale"),
        advisor=_text(advisor, "advisor", required=True, max_length=32),
        status="open",
    )
    session.execute(
        update(PromptSuggestion)
        .where(PromptSuggestion.character_id == character.id, PromptSuggestion.status == "open")
        .values(status="superseded")
        .execution_options(synchronize_session=False)
    )
    session.add(suggestion)
    session.flush()
    return suggestion


def _close(session: Session, suggestion_id: int, status: str) -> PromptSuggestion:
    """Move an open suggestion to `status`, exactly once."""
    suggestion_id = _get(session, PromptSuggestion, suggestion_id, "prompt suggestion").id
    statement = (
        update(PromptSuggestion)
        .where(PromptSuggestion.id == suggestion_id, PromptSuggestion.status == "open")
        .values(status=status)
    )
    if _updated_rows(session, statement) != 1:
        current = session.scalar(
            select(PromptSuggestion.status).where(PromptSuggestion.id == suggestion_id)
        )
        raise ConflictError(f"prompt suggestion {suggestion_id} is already {current}")
    suggestion = session.get(PromptSuggestion, suggestion_id, populate_existing=True)
    assert suggestion is not None  # just updated
    return suggestion


def accept_suggestion(session: Session, suggestion_id: int) -> PromptSuggestion:
    """Make the suggestion the character's design prompt for all future generations."""
    suggestion = _close(session, suggestion_id, "accepted")
    character = session.get(Character, suggestion.character_id)
    assert character is not None  # foreign key
    character.design_prompt = suggestion.suggested_prompt
    session.flush()
    return suggestion


def dismiss_suggestion(session: Session, suggestion_id: int) -> PromptSuggestion:
    return _close(session, suggestion_id, "dismissed")


def open_suggestions(session: Session) -> dict[int, PromptSuggestion]:
    """The open suggestion of every character that has one, by character id."""
    rows = session.scalars(
        select(PromptSuggestion)
        .where(PromptSuggestion.status == "open")
        .order_by(PromptSuggestion.id)
    )
    return {row.character_id: row for row in rows}


def last_suggestion_time(session: Session, character_id: int) -> datetime | None:
    return session.scalar(
        select(func.max(PromptSuggestion.created_at)).where(
            PromptSuggestion.character_id == character_id
        )
    )


def structured_rejections(
    session: Session, character_id: int, since: datetime | None = None
) -> list[Feedback]:
    """The character's rejections that name at least one category, oldest first.

    `since` keeps the ones recorded after a moment (the last suggestion), so that an advisor
    works from the feedback it has not answered yet.
    """
    query = select(Feedback).where(Feedback.character_id == character_id).order_by(Feedback.id)
    if since is not None:
        query = query.where(Feedback.created_at > since)
    return [f for f in session.scalars(query) if f.categories]
