"""Commands on LoRA releases (candidate -> approved -> active, behind the gate) and evals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _get, _reload, _try_insert, _updated_rows
from lora_pipeline.registry.commands._validate import (
    _choice,
    _json,
    _optional_text,
    _relative_path,
    _sha256,
    _text,
)
from lora_pipeline.registry.errors import ConflictError, GateError, InvalidInputError
from lora_pipeline.registry.models import (
    EVAL_VERDICTS,
    RELEASE_SCOPES,
    RELEASE_STATUSES,
    Character,
    DatasetVersion,
    Eval,
    LoraRelease,
    Model,
    utcnow,
)


def register_lora_release(
    session: Session,
    character_id: int,
    dataset_version_id: int | None,
    path: str,
    sha256: str,
    base_checkpoint: str | None,
    hyperparameters: dict[str, Any],
    scope: str = "project",
    base_model_version: str = "sd15",
    parent_release_id: int | None = None,
    run_id: str | None = None,
) -> LoraRelease:
    """Register a trained LoRA as a candidate release, with its row in `models` and the
    Dagster run that trained it.

    The checkpoint is stored by its `checkpoint_key` (the full path stays in the
    hyperparameters). Registering the same file (sha256) again for the character returns the
    existing release.
    """
    character = _get(session, Character, character_id, "character")
    if dataset_version_id is not None:
        version = _get(session, DatasetVersion, dataset_version_id, "dataset version")
        if version.character_id != character.id:
            raise InvalidInputError(
                f"dataset version {version.id} belongs to another character than {character.slug!r}"
            )
        dataset_version_id = version.id
    digest = _sha256(sha256)
    release_path = _relative_path(path, "LoRA path")
    existing = session.scalar(
        select(LoraRelease).where(
            LoraRelease.character_id == character.id, LoraRelease.sha256 == digest
        )
    )
    if existing is not None:
        return existing
    if parent_release_id is not None:
        parent = _get(session, LoraRelease, parent_release_id, "parent release")
        if parent.character_id != character.id:
            raise InvalidInputError(f"release {parent.id} belongs to another character")
        parent_release_id = parent.id
    release = LoraRelease(
        parent_release_id=parent_release_id,
        character_id=character.id,
        dataset_version_id=dataset_version_id,
        base_checkpoint=checkpoint_key(_optional_text(base_checkpoint, "base checkpoint")),
        path=release_path,
        sha256=digest,
        status="candidate",
        scope=_choice(scope, RELEASE_SCOPES, "release scope"),
        hyperparameters=_json(hyperparameters, "hyperparameters", dict),
        run_id=_optional_text(run_id, "run id", 64),
    )
    number = 1 + (
        session.scalar(
            select(func.count(LoraRelease.id)).where(LoraRelease.character_id == character.id)
        )
        or 0
    )
    model = _insert_lora_model(
        session,
        names=(f"{character.slug}-v{number}", f"{character.slug}-v{number}-{digest[:8]}"),
        path=release_path,
        sha256=digest,
        base_model_version=_text(
            base_model_version, "base model version", required=True, max_length=64
        ),
    )
    release.model_id = model.id
    session.add(release)
    session.flush()
    return release


def _insert_lora_model(
    session: Session, names: Sequence[str], path: str, sha256: str, base_model_version: str
) -> Model:
    """Insert the Model row under the first free name (a concurrent release may take one)."""
    for name in names:
        model = Model(
            name=name, kind="lora", path=path, sha256=sha256, base_model_version=base_model_version
        )
        if session.scalar(select(Model.id).where(Model.name == name)) is None and _try_insert(
            session, model
        ):
            return model
    raise ConflictError(f"model names {', '.join(names)} are all taken")


# Release transitions: new status -> the statuses it may come from. A rejected release stays
# rejected; making an active release "approved" takes it out of production.
_RELEASE_TRANSITIONS = {
    "approved": ("candidate", "approved", "active"),
    "active": ("candidate", "approved", "active"),
    "rejected": ("candidate", "approved", "active", "rejected"),
    "candidate": ("candidate",),
}


def checkpoint_key(checkpoint: str | None) -> str:
    """The name a checkpoint is known by wherever it lives: the file or folder name without a
    weights suffix, so that the trainer's `/models/anything-v5.safetensors`, ComfyUI's
    `anything-v5.safetensors` and a diffusers folder `anything-v5/` are one checkpoint."""
    name = PurePosixPath(str(checkpoint or "").replace("\\", "/").rstrip("/")).name
    for suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_gate(
    session: Session,
    release: LoraRelease,
    status: str,
    override_reason: str | None,
    reviewer: str | None,
) -> dict[str, Any]:
    """Approval and activation need the release's latest eval to have passed the gate (an
    approved release re-evaluated below a raised threshold cannot be activated either), or to
    be unverified and overridden: by this decision (its reason and reviewer, returned as the
    columns to record) or by an earlier one on the same eval. Taking an active release out of
    production (active -> approved) needs nothing."""
    approving = status == "approved" and release.status == "candidate"
    activating = status == "active" and release.status != "active"
    if not (approving or activating):
        return {}
    latest = session.scalar(
        select(Eval).where(Eval.lora_release_id == release.id).order_by(Eval.id.desc()).limit(1)
    )
    if latest is None:
        raise GateError(
            f"release {release.id} has not been evaluated yet; run eval_grid before "
            f"making it {status}"
        )
    if latest.verdict == "pass":
        return {}
    reasons = "; ".join((latest.scores or {}).get("gate_reasons") or []) or latest.verdict
    if latest.verdict != "unverified":
        raise GateError(
            f"release {release.id} did not pass the evaluation gate (eval {latest.id}: "
            f"{reasons}); it cannot be made {status}"
        )
    if release.gate_override_eval_id == latest.id and not override_reason:
        return {}
    reason = _optional_text(override_reason, "override reason", 2000)
    who = _optional_text(reviewer, "reviewer", 128)
    if not reason or not who:
        raise GateError(
            f"release {release.id} is unverified (eval {latest.id}: {reasons}): nothing measured "
            f"whether it draws the character. Making it {status} needs an explicit override "
            "with a reason and the reviewer's name"
        )
    return {
        "gate_override_reason": reason,
        "gate_override_by": who,
        "gate_override_at": utcnow(),
        "gate_override_eval_id": latest.id,
    }


def set_release_status(
    session: Session,
    release_id: int,
    status: str,
    *,
    override_reason: str | None = None,
    reviewer: str | None = None,
    licence: str | None = None,
) -> LoraRelease:
    """Move a release along candidate -> approved -> active, or to rejected.

    Approving or activating needs a passing eval (`GateError` otherwise). An *unverified* eval
    (nothing failed, nothing measured whether it draws the character) can be overridden by a
    reviewer with a reason; the override is recorded on the release for that eval, so its
    activation later needs no second override, but a newer eval does. Making one active
    demotes the previous active release of the character on the same checkpoint to approved
    (and, for a baseline release, the previous active baseline of that checkpoint), so
    production generations use exactly one LoRA of each kind. Approval records the licence
    (`licence`, else the project's, else the dataset's); a project that requires one refuses
    approval without it (`GateError`).
    """
    release = _get(session, LoraRelease, release_id, "LoRA release")
    _choice(status, RELEASE_STATUSES, "release status")
    if release.status not in _RELEASE_TRANSITIONS[status]:
        raise ConflictError(f"release {release.id} is {release.status}; it cannot become {status}")
    override = _check_gate(session, release, status, override_reason, reviewer)
    character = session.get(Character, release.character_id)
    assert character is not None  # foreign key
    override.update(_licence_columns(session, release, character, status, licence))
    try:
        # Inside the SAVEPOINT, so that a unique violation leaves the caller's session usable.
        with session.begin_nested():
            if status == "active" and release.status != "active":
                _demote_active(session, release)
            # Conditional on the status this decision was made on: of two reviewers deciding
            # at once, the second is told instead of silently overriding the first.
            statement = (
                update(LoraRelease)
                .where(LoraRelease.id == release.id, LoraRelease.status == release.status)
                .values(status=status, **override)
            )
            if _updated_rows(session, statement) != 1:
                raise ConflictError(
                    f"release {release.id} was changed by someone else meanwhile; reload and "
                    "try again"
                )
    except IntegrityError:
        # The partial unique indexes: another session activated a release meanwhile.
        raise ConflictError(
            f"another release of character {character.slug!r} was made active at the same "
            "time; try again"
        ) from None
    return _reload(session, LoraRelease, release.id)


def _licence_columns(
    session: Session, release: LoraRelease, character: Character, status: str, given: str | None
) -> dict[str, Any]:
    """The licence an approval (or a candidate's activation) records: the one given, else the
    one already recorded, else the project's `licence` setting, else the dataset's provenance
    licence. Seed 004: a project with `require_licence` refuses the approval without one."""
    if not (status in ("approved", "active") and release.status == "candidate"):
        return {}
    project_settings = character.project.settings or {}
    licence = (
        _optional_text(given, "licence", 2000)
        or release.licence
        or project_settings.get("licence")
        or _dataset_licence(session, release.dataset_version_id)
    )
    if licence:
        return {"licence": licence}
    if project_settings.get("require_licence"):
        slug = character.project.slug
        raise GateError(
            f"release {release.id} cannot be made {status}: project {slug!r} requires a "
            f"licence and none is recorded; give one (--licence TEXT, or the Licence field on "
            f"the Releases page) or set the project's (`lora-pipeline project set {slug} "
            "--licence TEXT`)"
        )
    return {}


def _dataset_licence(session: Session, version_id: int | None) -> str | None:
    version = session.get(DatasetVersion, version_id) if version_id is not None else None
    provenance = (version.manifest or {}).get("provenance") if version is not None else None
    licence = provenance.get("license") if isinstance(provenance, dict) else None
    return licence if isinstance(licence, str) and licence.strip() else None


def _demote_active(session: Session, release: LoraRelease) -> None:
    # A project release's slot is its character and checkpoint; a baseline release's is the
    # checkpoint alone, whichever character's partition trained it.
    same_slot = and_(
        LoraRelease.scope == release.scope,
        LoraRelease.base_checkpoint == release.base_checkpoint,
    )
    if release.scope == "project":
        same_slot = and_(same_slot, LoraRelease.character_id == release.character_id)
    session.execute(
        update(LoraRelease)
        .where(same_slot, LoraRelease.status == "active", LoraRelease.id != release.id)
        .values(status="approved")
    )


def select_release_file(
    session: Session, release_id: int, path: str, sha256: str, epoch: int
) -> LoraRelease:
    """Point a candidate release at the file of its best saved epoch (chosen by evaluation)."""
    release = _get(session, LoraRelease, release_id, "LoRA release")
    if release.status != "candidate":
        raise ConflictError(
            f"release {release.id} is {release.status}; only a candidate can change its file"
        )
    hyperparameters = dict(release.hyperparameters or {})
    # The trainer's last file stays known, so a re-evaluation compares the same epochs.
    hyperparameters.setdefault("final_file", release.path)
    release.path = _relative_path(path, "LoRA path")
    release.sha256 = _sha256(sha256)
    release.hyperparameters = hyperparameters | {"selected_epoch": epoch}
    if release.model_id is not None:
        model = session.get(Model, release.model_id)
        if model is not None:
            model.path, model.sha256 = release.path, release.sha256
    session.flush()
    return release


def record_eval(
    session: Session,
    release_id: int,
    settings: dict[str, Any],
    grid_path: str,
    image_paths: Sequence[str],
    scores: dict[str, Any],
    verdict: str,
) -> Eval:
    release = _get(session, LoraRelease, release_id, "LoRA release")
    if isinstance(image_paths, str):
        raise InvalidInputError("image_paths must be a list of paths, not one string")
    evaluation = Eval(
        lora_release_id=release.id,
        settings=_json(settings, "eval settings", dict),
        grid_path=_relative_path(grid_path, "grid path"),
        image_paths=[_relative_path(p, "eval image path") for p in image_paths],
        scores=_json(scores, "scores", dict),
        verdict=_choice(verdict, EVAL_VERDICTS, "eval verdict"),
    )
    session.add(evaluation)
    session.flush()
    return evaluation
