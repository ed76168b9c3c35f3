"""Generation jobs, stuck jobs, dataset versions, LoRA releases and evals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.errors import (
    ConflictError,
    GateError,
    InvalidInputError,
    NotFoundError,
)
from lora_pipeline.registry.models import Character, GenerationJob, LoraRelease, Model
from lora_pipeline_tests.registry.conftest import make_cast, passed_gate, sha


def job_for(session: Session, character: Character, **kwargs: object) -> GenerationJob:
    arguments: dict[str, object] = {
        "prompt": "aiko, teal hair",
        "negative_prompt": "blurry",
        "seed": 2**33,
        "params": {"steps": 20},
    } | kwargs
    return commands.create_generation_job(session, character.id, **arguments)  # type: ignore[arg-type]


def test_create_generation_job(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    image, _ = commands.add_image(session, aiko.id, sha(1), "images/1.png", 8, 8, "generated")
    feedback = commands.reject_image(session, image.id, ["bad_quality"])
    job = job_for(session, aiko, feedback_ids=[feedback.id], backend="comfyui", run_id="r1")
    assert (job.status, job.seed, job.backend, job.kind, job.run_id) == (
        "pending",
        2**33,
        "comfyui",
        "image",
        "r1",
    )
    assert (job.params, job.feedback_ids) == ({"steps": 20}, [feedback.id])


def test_create_generation_job_errors(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    image, _ = commands.add_image(session, kenji.id, sha(1), "images/1.png", 8, 8, "generated")
    kenji_feedback = commands.reject_image(session, image.id, ["bad_quality"])
    with pytest.raises(NotFoundError, match="unknown character 999"):
        commands.create_generation_job(session, 999, "p", "", 1, {})
    with pytest.raises(InvalidInputError, match="prompt must not be empty"):
        job_for(session, aiko, prompt=" ")
    with pytest.raises(InvalidInputError, match="seed must be between 0 and"):
        job_for(session, aiko, seed=-1)
    with pytest.raises(InvalidInputError, match="params must be a dict"):
        job_for(session, aiko, params=[1])
    with pytest.raises(NotFoundError, match="unknown feedback 999"):
        job_for(session, aiko, feedback_ids=[999])
    with pytest.raises(InvalidInputError, match="is about another character than 'aiko'"):
        job_for(session, aiko, feedback_ids=[kenji_feedback.id])


def test_job_lifecycle(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    job = job_for(session, aiko)
    running = commands.mark_job(session, job.id, "running", comfyui_prompt_id="p-1")
    assert running is job
    assert (job.status, job.comfyui_prompt_id, job.finished_at) == ("running", "p-1", None)
    assert job.started_at is not None
    started = job.started_at
    commands.mark_job(session, job.id, "completed")
    assert job.status == "completed"
    assert job.started_at == started and job.finished_at is not None
    with pytest.raises(ConflictError, match=f"generation job {job.id} is completed, it cannot"):
        commands.mark_job(session, job.id, "running")
    with pytest.raises(ConflictError, match="is completed, it cannot become failed"):
        commands.mark_job(session, job.id, "failed")


def test_job_may_fail_or_complete_from_pending(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    failed = commands.mark_job(session, job_for(session, aiko).id, "failed", error="CUDA OOM")
    assert (failed.status, failed.error) == ("failed", "CUDA OOM")
    assert failed.started_at is not None and failed.finished_at is not None
    done = commands.mark_job(session, job_for(session, aiko).id, "completed")
    assert done.status == "completed"
    with pytest.raises(InvalidInputError, match="cannot mark a generation job 'pending'"):
        commands.mark_job(session, done.id, "pending")
    with pytest.raises(NotFoundError, match="unknown generation job 999"):
        commands.mark_job(session, 999, "running")


def test_fail_stuck_jobs(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    now = datetime(2030, 1, 1, 12, 0)
    old, recent = now - timedelta(hours=3), now - timedelta(minutes=10)
    pending_old, pending_new = job_for(session, aiko), job_for(session, aiko)
    running_old, running_new = job_for(session, aiko), job_for(session, aiko)
    finished = job_for(session, aiko)
    commands.mark_job(session, finished.id, "completed")
    for job, created, started, status in (
        (pending_old, old, None, "pending"),
        (pending_new, recent, None, "pending"),
        (running_old, old, old, "running"),
        # Created long ago but started recently: it is working, not stuck.
        (running_new, old, recent, "running"),
        (finished, old, old, "completed"),
    ):
        session.execute(
            update(GenerationJob)
            .where(GenerationJob.id == job.id)
            .values(created_at=created, started_at=started, status=status)
        )
    failed = commands.fail_stuck_jobs(session, timedelta(hours=1), now=now)
    assert failed == [pending_old.id, running_old.id]
    assert pending_old.status == "failed"  # objects in the session are refreshed
    assert pending_old.error == "stuck: pending since 2030-01-01 09:00:00 UTC, longer than 1:00:00"
    assert running_old.finished_at == now
    assert [pending_new.status, running_new.status, finished.status] == [
        "pending",
        "running",
        "completed",
    ]
    # An aware `now` is converted to naive UTC; nothing is left to fail.
    assert commands.fail_stuck_jobs(session, timedelta(hours=1), now=now.replace(tzinfo=UTC)) == []
    with pytest.raises(InvalidInputError, match="older_than must be a positive timedelta"):
        commands.fail_stuck_jobs(session, timedelta(0))


def test_record_dataset_version_is_idempotent(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    manifest = {"images": [{"id": 1}, {"id": 2}], "trigger_word": "aiko"}
    version, created = commands.record_dataset_version(
        session, aiko.id, "ab12cd34", manifest, "datasets/aiko/ab12cd34/manifest.json"
    )
    assert created and version.image_count == 2 and version.manifest == manifest
    again, created = commands.record_dataset_version(
        session, aiko.id, "ab12cd34", manifest, "datasets/aiko/ab12cd34/manifest.json"
    )
    assert (again.id, created) == (version.id, False)
    assert queries.latest_dataset_version(session, aiko.id) is version


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("XYZ", {"images": []}, "m.json"), "invalid version hash 'XYZ'"),
        (("ab12cd34", {"files": []}, "m.json"), "manifest must have an 'images' list"),
        (("ab12cd34", [], "m.json"), "manifest must be a dict"),
        (("ab12cd34", {"images": []}, "/m.json"), "must be relative to the data root"),
    ],
)
def test_record_dataset_version_errors(
    session: Session, args: tuple[object, ...], message: str
) -> None:
    _, aiko, _ = make_cast(session)
    with pytest.raises(InvalidInputError, match=message):
        commands.record_dataset_version(session, aiko.id, *args)  # type: ignore[arg-type]


def release_for(session: Session, character: Character, n: int, **kwargs: object) -> LoraRelease:
    arguments: dict[str, object] = {
        "dataset_version_id": None,
        "path": f"loras/{character.slug}-{n}.safetensors",
        "sha256": sha(n),
        "base_checkpoint": "sd15.safetensors",
        "hyperparameters": {"rank": 4},
    } | kwargs
    return commands.register_lora_release(session, character.id, **arguments)  # type: ignore[arg-type]


def test_register_lora_release(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    version, _ = commands.record_dataset_version(
        session, aiko.id, "ab12cd34", {"images": [1]}, "datasets/aiko/m.json"
    )
    first = release_for(session, aiko, 1, dataset_version_id=version.id)
    assert (first.status, first.scope, first.dataset_version_id) == (
        "candidate",
        "project",
        version.id,
    )
    model = session.get(Model, first.model_id)
    assert model is not None
    assert (model.name, model.kind, model.path, model.sha256) == (
        "aiko-v1",
        "lora",
        "loras/aiko-1.safetensors",
        sha(1),
    )
    second = release_for(session, aiko, 2, scope="baseline")
    assert session.get(Model, second.model_id).name == "aiko-v2"  # type: ignore[union-attr]
    assert release_for(session, aiko, 1) is first  # the same file again
    assert queries.latest_release(session, aiko.id) is second
    assert queries.trained_dataset_hashes(session, aiko.id) == {"ab12cd34"}
    assert queries.trained_dataset_hashes(session, kenji.id) == set()
    with pytest.raises(InvalidInputError, match="belongs to another character than 'kenji'"):
        release_for(session, kenji, 3, dataset_version_id=version.id)
    with pytest.raises(InvalidInputError, match="invalid release scope 'world'"):
        release_for(session, aiko, 3, scope="world")
    with pytest.raises(InvalidInputError, match="hyperparameters cannot be stored as JSON"):
        release_for(session, aiko, 3, hyperparameters={"lr": float("inf")})
    with pytest.raises(NotFoundError, match="unknown dataset version 999"):
        release_for(session, aiko, 3, dataset_version_id=999)


def test_model_name_falls_back_when_taken(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    session.add(Model(name="aiko-v1", kind="lora", path="elsewhere.safetensors"))
    release = release_for(session, aiko, 1)
    assert session.get(Model, release.model_id).name == f"aiko-v1-{sha(1)[:8]}"  # type: ignore[union-attr]


def test_one_active_release_per_character(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    first, second = release_for(session, aiko, 1), release_for(session, aiko, 2)
    kenji_release = release_for(session, kenji, 3)
    for release in (first, second, kenji_release):
        passed_gate(session, release.id)
    commands.set_release_status(session, kenji_release.id, "active")
    assert commands.set_release_status(session, first.id, "active").status == "active"
    assert queries.active_release(session, aiko.id) is first
    commands.set_release_status(session, second.id, "active")
    assert (first.status, second.status) == ("approved", "active")
    assert queries.active_release(session, aiko.id) is second
    assert kenji_release.status == "active"  # other characters are untouched
    commands.set_release_status(session, second.id, "active")  # again: no change
    assert second.status == "active"
    commands.set_release_status(session, second.id, "rejected")
    assert queries.active_release(session, aiko.id) is None
    with pytest.raises(InvalidInputError, match="invalid release status 'gold'"):
        commands.set_release_status(session, first.id, "gold")
    with pytest.raises(NotFoundError, match="unknown LoRA release 999"):
        commands.set_release_status(session, 999, "active")


def test_database_refuses_two_active_releases(registry: Registry) -> None:
    with registry.session() as session:
        _, aiko, _ = make_cast(session)
        ids = [release_for(session, aiko, n).id for n in (1, 2)]
    with pytest.raises(IntegrityError), registry.session() as session:
        session.execute(update(LoraRelease).where(LoraRelease.id.in_(ids)).values(status="active"))
    with registry.session() as session:
        statuses = session.scalars(select(LoraRelease.status).order_by(LoraRelease.id))
        assert list(statuses) == ["candidate", "candidate"]


def test_record_eval(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    evaluation = commands.record_eval(
        session,
        release.id,
        {"prompts": ["a"], "seeds": [1]},
        "evals/1/grid.png",
        ["evals/1/a.png"],
        {"lora_effect": 0.4},
        "pass",
    )
    assert (evaluation.lora_release_id, evaluation.verdict, evaluation.image_paths) == (
        release.id,
        "pass",
        ["evals/1/a.png"],
    )
    with pytest.raises(InvalidInputError, match="invalid eval verdict 'great'"):
        commands.record_eval(session, release.id, {}, "g.png", [], {}, "great")
    with pytest.raises(InvalidInputError, match="eval image path '../x.png' must be relative"):
        commands.record_eval(session, release.id, {}, "g.png", ["../x.png"], {}, "fail")
    with pytest.raises(NotFoundError, match="unknown LoRA release 999"):
        commands.record_eval(session, 999, {}, "g.png", [], {}, "fail")


def test_the_gate_blocks_approval_and_activation_until_an_eval_passes(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    with pytest.raises(GateError, match="has not been evaluated yet"):
        commands.set_release_status(session, release.id, "active")
    commands.record_eval(
        session,
        release.id,
        {},
        "evals/1/grid.png",
        [],
        {"gate_reasons": ["identity 0.41 < 0.60"]},
        "fail",
    )
    for status in ("approved", "active"):
        with pytest.raises(GateError, match=r"did not pass .*identity 0.41 < 0.60"):
            commands.set_release_status(session, release.id, status)
    assert release.status == "candidate"
    passed_gate(session, release.id)  # a later eval (e.g. after a threshold change) passes
    assert commands.set_release_status(session, release.id, "approved").status == "approved"
    assert commands.set_release_status(session, release.id, "active").status == "active"
    assert commands.set_release_status(session, release.id, "approved").status == "approved"
    # Re-evaluated below a raised threshold: an approved release cannot go (back) to production.
    commands.record_eval(session, release.id, {}, "evals/1/g.png", [], {}, "fail")
    with pytest.raises(GateError, match="did not pass"):
        commands.set_release_status(session, release.id, "active")
    assert release.status == "approved"


def test_a_rejected_release_stays_rejected(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    commands.set_release_status(session, release.id, "rejected")
    passed_gate(session, release.id)
    for status in ("candidate", "approved", "active"):
        with pytest.raises(ConflictError, match="is rejected; it cannot become"):
            commands.set_release_status(session, release.id, status)


def test_one_active_release_per_checkpoint_and_one_active_baseline(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    on_a = release_for(session, aiko, 1, base_checkpoint="/models/a.safetensors")
    on_b = release_for(session, aiko, 2, base_checkpoint="b.safetensors")
    base_1 = release_for(session, aiko, 3, base_checkpoint="a.safetensors", scope="baseline")
    base_2 = release_for(session, kenji, 4, base_checkpoint="a", scope="baseline")
    for release in (on_a, on_b, base_1, base_2):
        passed_gate(session, release.id)
        commands.set_release_status(session, release.id, "active")
    assert on_a.base_checkpoint == "a"  # stored by its key: path and suffix dropped
    # A baseline's slot is its checkpoint, whichever character trained it: base_2 replaced
    # base_1; the characters' own releases on a and b stay active.
    assert [r.status for r in (on_a, on_b, base_1, base_2)] == [
        "active",
        "active",
        "approved",
        "active",
    ]
    assert queries.active_release(session, aiko.id, "b.safetensors") is on_b
    assert queries.active_release(session, aiko.id, "/other/place/a.ckpt") is on_a
    assert queries.active_release(session, kenji.id, "a") is None  # base_2 is not kenji's own
    assert queries.active_baseline_release(session, "/ckpts/a.safetensors") is base_2
    assert queries.active_baseline_release(session, "b") is None


@pytest.mark.parametrize(
    ("checkpoint", "key"),
    [
        ("/models/checkpoints/anything-v5.safetensors", "anything-v5"),
        ("anything-v5.ckpt", "anything-v5"),
        ("C:\\ComfyUI\\models\\anything-v5.safetensors", "anything-v5"),
        ("runwayml/stable-diffusion-v1-5", "stable-diffusion-v1-5"),
        ("/models/sd15-diffusers/", "sd15-diffusers"),
        ("", ""),
        (None, ""),
    ],
)
def test_checkpoint_key(checkpoint: str | None, key: str) -> None:
    assert commands.checkpoint_key(checkpoint) == key


def test_retrain_records_its_parent_release(session: Session) -> None:
    _, aiko, kenji = make_cast(session)
    first = release_for(session, aiko, 1)
    second = release_for(session, aiko, 2, parent_release_id=first.id)
    assert second.parent_release_id == first.id
    with pytest.raises(InvalidInputError, match="belongs to another character"):
        release_for(session, kenji, 3, parent_release_id=first.id)


def test_select_release_file_points_a_candidate_at_its_best_epoch(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    commands.select_release_file(session, release.id, "loras/aiko/epochs/e2.safetensors", sha(9), 2)
    assert (release.path, release.sha256) == ("loras/aiko/epochs/e2.safetensors", sha(9))
    assert release.hyperparameters["selected_epoch"] == 2
    assert session.get(Model, release.model_id).sha256 == sha(9)  # type: ignore[union-attr]
    passed_gate(session, release.id)
    commands.set_release_status(session, release.id, "approved")
    with pytest.raises(ConflictError, match="only a candidate can change its file"):
        commands.select_release_file(session, release.id, "loras/x.safetensors", sha(8), 1)


def test_project_settings(session: Session) -> None:
    make_cast(session)
    project = commands.update_project_settings(
        session, "show", eval_prompts=["portrait", "full body"], min_identity=0.6, licence="CC-BY"
    )
    assert project.settings == {
        "eval_prompts": ["portrait", "full body"],
        "min_identity": 0.6,
        "licence": "CC-BY",
    }
    commands.update_project_settings(session, "show", min_identity=None)
    assert "min_identity" not in project.settings
    with pytest.raises(InvalidInputError, match="unknown project setting colour"):
        commands.update_project_settings(session, "show", colour="red")
    with pytest.raises(InvalidInputError, match="min_quality"):
        commands.update_project_settings(session, "show", min_quality=3)
    with pytest.raises(InvalidInputError, match="list of prompts"):
        commands.update_project_settings(session, "show", eval_prompts="portrait")
    with pytest.raises(NotFoundError):
        commands.update_project_settings(session, "nope", licence="x")
