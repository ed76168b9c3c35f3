"""Release decisions, shared by the review app and the CLI: approve, activate, reject, deactivate.

Each decision is one registry transaction through `commands.set_release_status`, whose gate
refuses to approve or activate a release without a passing eval. Afterwards the model card of
every release whose status changed (the one decided and any active release it demoted) is
rewritten, so that no card beside a LoRA claims a status it no longer has.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lora_pipeline.errors import first_line
from lora_pipeline.generation.comfyui import copy_to_comfyui
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import DatasetVersion, Eval, LoraRelease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseAction:
    name: str
    label: str
    # The status the action sets, and the statuses a release must have for it to apply.
    status: str
    sources: tuple[str, ...]
    done: str


ACTIONS = {
    action.name: action
    for action in (
        ReleaseAction("approve", "Approve", "approved", ("candidate",), "approved"),
        ReleaseAction("activate", "Activate", "active", ("candidate", "approved"), "activated"),
        ReleaseAction(
            "reject", "Reject", "rejected", ("candidate", "approved", "active"), "rejected"
        ),
        # Out of production but still approved: it can be activated again without a new eval.
        ReleaseAction("deactivate", "Deactivate", "approved", ("active",), "deactivated"),
    )
}


def allowed_actions(status: str) -> tuple[str, ...]:
    """The actions that apply to a release with `status` (the buttons a page offers)."""
    return tuple(name for name, action in ACTIONS.items() if status in action.sources)


@dataclass(frozen=True)
class ReleaseChange:
    release_id: int
    previous: str
    status: str
    # Active releases of the same slot that went back to approved.
    demoted: tuple[int, ...]
    cards: tuple[Path, ...]
    # One line per model card that could not be rewritten; the status change stands.
    card_errors: tuple[str, ...]

    @property
    def message(self) -> str:
        return describe(self.release_id, self.status, self.demoted)


def describe(release_id: int, status: str, demoted: Iterable[int] = ()) -> str:
    """The one-line outcome of a decision, e.g. for a notice after a redirect."""
    message = f"Release {release_id} is now {status}."
    others = [str(i) for i in demoted]
    if others:
        which = "release " if len(others) == 1 else "releases "
        message += f" Previously active {which}{', '.join(others)} went back to approved."
    return message


def action_named(name: str) -> ReleaseAction:
    action = ACTIONS.get(name)
    if action is None:
        raise InvalidInputError(f"unknown release action {name!r}: use {', '.join(ACTIONS)}")
    return action


def change_release(
    registry: Registry,
    root: DataRoot,
    release_id: int,
    action_name: str,
    loras_dir: Path | None = None,
    *,
    override_reason: str | None = None,
    reviewer: str | None = None,
    licence: str | None = None,
) -> ReleaseChange:
    """Apply a release action; `GateError`/`ConflictError` (nothing changed) when it does not
    apply, then rewrite the model cards of the releases whose status changed. An activated
    release's file is put into ComfyUI's loras folder (`loras_dir`), where the workflows'
    LoraLoaders look for it. `override_reason` and `reviewer` approve (or activate) a release
    whose gate is unverified; the registry records them and the model card shows them, as it
    shows the `licence` an approval records (refused where the project requires one)."""
    action = action_named(action_name)
    with registry.session() as session:
        release = session.get(LoraRelease, release_id)
        if release is None:
            raise NotFoundError(f"unknown LoRA release {release_id}")
        previous = release.status
        if previous not in action.sources:
            raise ConflictError(_refusal(release_id, previous, action))
        active = _active_ids(session) - {release_id}
        changed = commands.set_release_status(
            session,
            release_id,
            action.status,
            override_reason=override_reason,
            reviewer=reviewer,
            licence=licence,
        )
        demoted = tuple(sorted(active - _active_ids(session)))
        lora_file = root.path(changed.path)
    problems: list[str] = []
    if action.status == "active":
        try:
            copy_to_comfyui(lora_file, loras_dir)
        except OSError as error:  # the decision stands; the copy can be redone
            problems.append(
                f"release {release_id} was not copied to ComfyUI's loras folder: {error}"
            )
    cards, errors = rewrite_model_cards(registry, root, (release_id, *demoted))
    return ReleaseChange(release_id, previous, action.status, demoted, cards, (*problems, *errors))


def _refusal(release_id: int, status: str, action: ReleaseAction) -> str:
    if status == action.status and action.name != "deactivate":
        return f"release {release_id} is already {status}"
    return (
        f"release {release_id} is {status}: only a release that is "
        f"{' or '.join(action.sources)} can be {action.done}"
    )


def _active_ids(session: Any) -> set[int]:
    return set(session.scalars(select(LoraRelease.id).where(LoraRelease.status == "active")))


def write_model_card(registry: Registry, root: DataRoot, release_id: int) -> Path:
    """Rewrite a release's model-card.md (evaluation's writer, imported when first needed so
    that the review app starts without loading the evaluation stack)."""
    from lora_pipeline.evaluation.service import write_model_card as write

    return write(registry, root, release_id)


def rewrite_model_cards(
    registry: Registry, root: DataRoot, release_ids: Iterable[int]
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """(written cards, one error line per card not written)."""
    cards: list[Path] = []
    errors: list[str] = []
    for release_id in release_ids:
        try:
            cards.append(write_model_card(registry, root, release_id))
        # Any failure: the decision is committed, so a stale card is reported, not fatal.
        except Exception as error:  # noqa: BLE001
            log.warning("model card of release %s not rewritten", release_id, exc_info=True)
            errors.append(
                f"the model card of release {release_id} was not rewritten: {first_line(error)}"
            )
    return tuple(cards), tuple(errors)


def eval_scores(evaluation: Eval) -> dict[str, str]:
    """The eval's top-level scores, formatted (nested details and the reasons left out)."""
    shown: dict[str, str] = {}
    for name, value in (evaluation.scores or {}).items():
        if name == "gate_reasons" or isinstance(value, bool):
            continue
        if value is None:
            shown[name] = "not measured"
        elif isinstance(value, numbers.Real):
            shown[name] = f"{float(value):.4g}"
    return shown


def dataset_label(session: Any, version_id: int | None) -> str:
    """The dataset version a release was trained on, short: hash prefix and image count."""
    version = session.get(DatasetVersion, version_id) if version_id is not None else None
    if version is None:
        return "not recorded"
    return f"{version.version_hash[:12]} ({version.image_count} images)"


def gate_reasons(evaluation: Eval) -> list[str]:
    reasons = (evaluation.scores or {}).get("gate_reasons") or []
    return [str(reason) for reason in reasons] if isinstance(reasons, list) else [str(reasons)]
