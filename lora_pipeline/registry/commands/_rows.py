"""Row helpers the commands share: lookups by id, reloads after a conditional UPDATE, and
inserts that may race (inside a SAVEPOINT)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._validate import _id
from lora_pipeline.registry.errors import ConflictError, NotFoundError
from lora_pipeline.registry.models import Base

RowT = TypeVar("RowT", bound=Base)


def _get(session: Session, model: type[RowT], row_id: object, what: str) -> RowT:
    row = session.get(model, _id(row_id, what))
    if row is None:
        raise NotFoundError(f"unknown {what} {row_id}")
    return row


def _reload(session: Session, model: type[RowT], row_id: int) -> RowT:
    """The row as committed by a conditional UPDATE that bypassed the identity map."""
    row = session.get(model, row_id, populate_existing=True)
    assert row is not None  # the caller has just updated it
    return row


def _try_insert(session: Session, row: Base) -> bool:
    """Insert `row` inside a SAVEPOINT; False (and nothing inserted) on a unique violation.

    The SAVEPOINT keeps the caller's transaction usable after the error, which PostgreSQL
    would otherwise abort.
    """
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def _updated_rows(session: Session, statement: Any) -> int:
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _existing_after_race(session: Session, lookup: Any, what: str) -> Any:
    existing = session.scalar(lookup)
    if existing is None:  # the unique violation was not a duplicate of this row
        raise ConflictError(f"{what} could not be recorded: a conflicting row exists")
    return existing
