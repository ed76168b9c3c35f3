"""A retrain continues from the last release when the gate fails: the plan starts from the failed
release's LoRA and the new release is registered as its child; a release that passed, was never
evaluated, or whose file cannot be used gives a fresh LoRA (with a note saying why)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from lora_pipeline.dataset.service import DatasetRef
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import LoraRelease
from lora_pipeline.training.backends import run_job
from lora_pipeline.training.job import TrainingJob
from lora_pipeline.training.kohya_format import read_kohya_lora
from lora_pipeline.training.service import (
    KohyaSetup,
    plan_character_training,
    register_trained_lora,
)
from lora_pipeline.training.trainer import TrainingConfig
from lora_pipeline_tests.training.test_kohya_backend import Recorder
from lora_pipeline_tests.training.test_options import _config as options_config

OLD = "loras/aiko/aiko-old.safetensors"
Studio = tuple[Registry, DataRoot, DatasetRef, str]


def _config(tiny_sd: Path, **changes: object) -> TrainingConfig:
    return options_config(tiny_sd, **({"max_steps": 2} | changes))


def _release(
    registry: Registry, root: DataRoot, tiny_sd: Path, verdicts: tuple[str, ...], rank: int = 4
) -> int:
    """A registered release of aiko with a stand-in file at OLD and evals of these verdicts."""
    file = root.path(OLD)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"a stand-in for a LoRA file")
    hyperparameters = {"rank": rank, "alpha": 4.0, "conv_rank": 0, "train_text_encoder": False}
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        release = commands.register_lora_release(
            session, character.id, None, OLD, sha256_file(file), str(tiny_sd), hyperparameters
        )
        for verdict in verdicts:
            commands.record_eval(session, release.id, {}, "evals/aiko/grid.png", [], {}, verdict)
        return release.id


def _plan(studio: Studio, tiny_sd: Path, **options: object) -> tuple[TrainingJob, list[str]]:
    registry, root, dataset, split = studio
    config = options.pop("config", None) or _config(tiny_sd)
    notes: list[str] = []
    job = plan_character_training(
        registry, root, dataset, split, config, samples=False, log=notes.append, **options
    )
    return job, notes


def test_a_retrain_after_a_failed_gate_continues_from_that_release(
    studio: Studio,
    tiny_sd: Path,
) -> None:
    registry, root, dataset, _ = studio
    first_job, notes = _plan(studio, tiny_sd)
    assert first_job.config.init_lora is None and first_job.parent_release_id is None
    assert notes == []
    first_result = run_job(first_job, Recorder())
    first = register_trained_lora(registry, root, dataset, first_job, first_result)
    with registry.session() as session:
        commands.record_eval(session, first.release_id, {}, "evals/g.png", [], {}, "fail")

    # rank and alpha left to the defaults: the parent's, which its weights fit
    job, notes = _plan(studio, tiny_sd, config=replace(_config(tiny_sd), rank=None, alpha=None))
    assert (job.config.rank, job.config.alpha) == (4, 4.0)
    assert job.config.init_lora == str(root.path(first.relpath))
    assert job.parent_release_id == first.release_id
    assert job.output_file != first_result.path, "the parent's file is not overwritten"
    assert TrainingJob.from_dict(job.to_dict()).parent_release_id == first.release_id
    assert notes == [
        f"release {first.release_id} failed its gate: training continues from {first.relpath}"
    ]

    result = run_job(job, Recorder())
    # the same seed and data as the first run: only the starting weights differ
    assert result.losses[0] != first_result.losses[0]
    assert read_kohya_lora(result.path)[1]["lora_pipeline.init_lora"] == first_result.path.name
    child = register_trained_lora(registry, root, dataset, job, result)
    assert child.parent_release_id == first.release_id
    with registry.session() as session:
        row = session.get(LoraRelease, child.release_id)
        assert row.parent_release_id == first.release_id
        assert row.hyperparameters["init_lora"] == job.config.init_lora
    assert first_result.path.is_file() and sha256_file(first_result.path) == first.sha256


@pytest.mark.parametrize(
    ("verdicts", "options"),
    [
        (("fail", "pass"), {}),  # the latest eval decides
        ((), {}),
        (("pending",), {}),
        (("fail",), {"continue_from_failed": False}),
    ],
)
def test_a_release_that_did_not_fail_or_a_run_that_says_no_starts_fresh(
    studio: Studio,
    tiny_sd: Path,
    verdicts: tuple[str, ...],
    options: dict,
) -> None:
    registry, root, dataset, _ = studio
    _release(registry, root, tiny_sd, verdicts)
    job, notes = _plan(studio, tiny_sd, **options)
    assert job.config.init_lora is None and job.parent_release_id is None
    assert job.output_file.name == f"aiko-{dataset.version_hash[:12]}.safetensors"
    assert notes == []


def test_only_the_latest_release_counts(studio: Studio, tiny_sd: Path) -> None:
    registry, root, _, _ = studio
    _release(registry, root, tiny_sd, ("fail",))
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        commands.register_lora_release(
            session, character.id, None, "loras/aiko/newer.safetensors", "e" * 64, str(tiny_sd), {}
        )
    job, _ = _plan(studio, tiny_sd)
    assert job.parent_release_id is None and job.config.init_lora is None


def test_a_character_lora_never_continues_from_a_baseline_nor_the_reverse(
    studio: Studio, tiny_sd: Path
) -> None:
    registry, root, _, _ = studio
    failed_project = _release(registry, root, tiny_sd, ("fail",))
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        baseline = commands.register_lora_release(
            session,
            character.id,
            None,
            "loras/aiko/style.safetensors",
            "e" * 64,
            str(tiny_sd),
            {},
            scope="baseline",
        )
        commands.record_eval(session, baseline.id, {}, "evals/aiko/grid.png", [], {}, "fail")
    job, _ = _plan(studio, tiny_sd)  # the newest release is the baseline: not this run's kind
    assert job.parent_release_id == failed_project
    job, notes = _plan(studio, tiny_sd, scope="baseline")
    assert job.parent_release_id is None  # the failed baseline's file is a stand-in: fresh
    assert any(f"release {baseline.id}" in note for note in notes)


def _break_missing(root: DataRoot) -> None:
    root.path(OLD).unlink()


def _break_changed(root: DataRoot) -> None:
    root.path(OLD).write_bytes(b"another file now")


@pytest.mark.parametrize(
    ("damage", "config_changes", "reason"),
    [
        (_break_missing, {}, f"its file {OLD} is missing"),
        (_break_changed, {}, f"its file {OLD} changed since it was registered"),
        (None, {"rank": 8}, "it has rank 4, this run asks for 8"),
        (None, {"base_model": "/models/other-v2.safetensors"}, "this run on other-v2"),
    ],
)
def test_a_failed_release_that_cannot_be_continued_gives_a_fresh_lora_and_a_note(
    studio: Studio,
    tiny_sd: Path,
    damage: Callable[[DataRoot], None] | None,
    config_changes: dict,
    reason: str,
) -> None:
    registry, root, _, _ = studio
    release_id = _release(registry, root, tiny_sd, ("fail",))
    if damage is not None:
        damage(root)
    job, notes = _plan(studio, tiny_sd, config=replace(_config(tiny_sd), **config_changes))
    assert job.config.init_lora is None and job.parent_release_id is None
    (note,) = notes
    assert note.startswith(f"release {release_id} failed its gate, but training starts fresh: ")
    assert note.endswith(reason)


def test_the_kohya_job_continues_in_its_own_work_folder(
    studio: Studio,
    tiny_sd: Path,
    tmp_path: Path,
) -> None:
    registry, root, dataset, _ = studio
    release_id = _release(registry, root, tiny_sd, ("fail",))
    job, _ = _plan(studio, tiny_sd, kohya=KohyaSetup(tmp_path / "sd-scripts"))
    assert job.backend == "kohya" and job.parent_release_id == release_id
    assert job.config.init_lora == str(root.path(OLD))
    assert Path(job.work_dir).name == f"kohya-{dataset.version_hash[:12]}-from{release_id}"
    assert job.output_file.name == f"aiko-{dataset.version_hash[:12]}-from{release_id}.safetensors"
