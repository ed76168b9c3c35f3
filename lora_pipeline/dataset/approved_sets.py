"""Every character's approved set as the training sensor sees it, kept up to date from the
decisions made since the last look instead of re-reading every approved set (issue 18).

An approved set changes only by a reviewer's decision, and a decision stamps the image's
`reviewed_at` (images are added pending or skipped, never approved, and never deleted). So
a tick reads the decisions after its cursor and recomputes only their characters. Writers
stamp `reviewed_at` before they commit, so a decision can become visible after a newer one:
each tick re-reads the last RE_READ_WINDOW before its cursor, which catches any decision
committed within that long of its stamp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from lora_pipeline.dataset.versions import dataset_fingerprint
from lora_pipeline.registry import queries

RE_READ_WINDOW = timedelta(minutes=2)
CURSOR_FORMAT = 1


@dataclass(frozen=True)
class ApprovedSet:
    """A character's approved set: its size, version hash, whether a release was trained on
    that version, and when a reviewer last decided on one of the character's images."""

    slug: str
    approved: int
    version: str
    trained: bool
    last_review: datetime | None


def _read_set(session: Session, character_id: int, slug: str) -> ApprovedSet:
    approved = queries.approved_pairs(session, character_id)
    return ApprovedSet(
        slug=slug,
        approved=len(approved),
        version=dataset_fingerprint(slug, approved),
        trained=False,  # asked for every character at once, see `advance`
        last_review=queries.last_review_at(session, character_id),
    )


def read_all(session: Session) -> list[ApprovedSet]:
    """Every character's set from scratch, one character after another, as the training
    sensor read them on every tick before it had a cursor: what `advance` must agree with."""
    sets = []
    for character in queries.list_characters(session):
        found = _read_set(session, character.id, character.slug)
        trained = found.version in queries.trained_dataset_hashes(session, character.id)
        sets.append(replace(found, trained=trained))
    return sets


@dataclass
class Tracker:
    """The training sensor's cursor: the newest decision seen and each character's set (its
    `trained` is asked again on every tick: a release can be registered without any
    decision)."""

    decided_up_to: datetime | None = None
    sets: dict[int, ApprovedSet] = field(default_factory=dict)

    def to_cursor(self) -> str:
        sets = {
            str(character_id): [
                s.slug,
                s.approved,
                s.version,
                s.last_review.isoformat() if s.last_review else None,
            ]
            for character_id, s in self.sets.items()
        }
        cursor = {
            "format": CURSOR_FORMAT,
            "decided_up_to": self.decided_up_to.isoformat() if self.decided_up_to else None,
            "sets": sets,
        }
        return json.dumps(cursor, separators=(",", ":"))

    @classmethod
    def from_cursor(cls, cursor: str | None) -> Tracker | None:
        """None for no cursor, or one this code cannot read (an older format): start over."""
        try:
            data = json.loads(cursor or "null")
            if not isinstance(data, dict) or data.get("format") != CURSOR_FORMAT:
                return None
            sets = {
                int(character_id): ApprovedSet(slug, int(count), version, False, _time(last))
                for character_id, (slug, count, version, last) in data["sets"].items()
            }
            return cls(_time(data["decided_up_to"]), sets)
        except (ValueError, TypeError, KeyError):
            return None


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def advance(session: Session, tracker: Tracker | None) -> tuple[Tracker, list[ApprovedSet]]:
    """The tracker after the decisions since it (every set read afresh when there is none),
    and every character's set in `list_characters` order, each with whether a release was
    trained on its version. Only the characters decided on since, and new ones, are read
    again; the characters themselves are listed each time (one short query), so one
    committed out of id order is not missed."""
    # Asked before the sets are read: a decision committed meanwhile is read again next tick.
    decided_up_to = queries.last_decision_at(session) if tracker is None else None
    if tracker is None:
        tracker = Tracker()
        decided: dict[int, datetime] = {}
    else:
        since = tracker.decided_up_to - RE_READ_WINDOW if tracker.decided_up_to else None
        decided = queries.decisions_since(session, since)
        decided_up_to = _latest(tracker.decided_up_to, *decided.values())
    characters = queries.characters_by_slug(session)
    sets = {}
    for character_id, slug in characters:
        known = tracker.sets.get(character_id)
        if known is None or character_id in decided or known.slug != slug:
            known = _read_set(session, character_id, slug)
        sets[character_id] = known
    versions = {character_id: s.version for character_id, s in sets.items()}
    trained = queries.trained_versions(session, versions)
    ordered = [replace(sets[c], trained=c in trained) for c, _ in characters]
    return Tracker(decided_up_to, sets), ordered
