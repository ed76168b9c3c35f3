"""The loop by hand: `character set`, `generate`, `train`, `runs` and `jobs` (one line and exit
2 for what cannot be done)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from lora_pipeline.config import Settings
from lora_pipeline.defs.instance import open_instance
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry
from lora_pipeline_tests import test_cli
from lora_pipeline_tests.test_cli import one_error_line, run

pytestmark = pytest.mark.slow
cast = test_cli.cast  # the fixture: a home with project demo and character aiko


def studio_registry() -> Registry:
    return Registry(Settings.current().database_url)


def approve(count: int) -> None:
    with studio_registry().session() as session:
        character = commands.get_character(session, "aiko")
        for n in range(count):
            digest = hashlib.sha256(f"aiko{n}".encode()).hexdigest()
            image, _ = commands.add_image(
                session, character.id, digest, f"images/a{n}.png", 64, 64, "generated"
            )
            commands.approve_image(session, image.id)


def test_character_set_changes_the_next_request(cast: Path, capsys) -> None:
    code, out, _ = run(
        capsys,
        "character",
        "set",
        "aiko",
        "--design-prompt",
        "red coat",
        "--seed",
        "40",
        "--lock-seed",
    )
    assert code == 0 and "set seed, design_prompt, seed_locked" in out
    assert "40 (locked)" in out
    code, out, _ = run(capsys, "generate", "aiko", "--count", "2")
    assert code == 0
    with studio_registry().session() as session:
        jobs = queries.generation_jobs(session)
        assert sorted(job.seed for job in jobs) == [40, 41]
        assert all(job.prompt.startswith("aiko, red coat") for job in jobs)
    code, out, _ = run(capsys, "character", "set", "aiko", "--unlock-seed")
    assert "random per image" in out
    code, _, err = run(capsys, "character", "set", "aiko")
    assert code == 2 and "nothing to change" in one_error_line(err)
    code, _, err = run(capsys, "character", "set", "nobody", "--name", "X")
    assert code == 2 and "unknown character 'nobody'" in one_error_line(err)


def test_generate_requests_one_job_per_image_each_with_its_seed(cast: Path, capsys) -> None:
    code, out, _ = run(capsys, "generate", "aiko", "--count", "12")
    assert code == 0 and "requested 12 generation job(s) for aiko" in out
    code, out, _ = run(capsys, "jobs", "list", "--json")
    jobs = json.loads(out)
    assert len(jobs) == 12 and {job["status"] for job in jobs} == {"pending"}
    assert len({job["seed"] for job in jobs}) == 12
    code, out, _ = run(capsys, "jobs", "list", "--character", "aiko", "--status", "pending")
    assert code == 0 and out.count("pending") == 12
    with pytest.raises(SystemExit) as refused:  # argparse: usage and one error line, exit 2
        run(capsys, "generate", "aiko", "--count", "0")
    assert refused.value.code == 2
    assert "--count must be between 1 and 100" in capsys.readouterr().err


def test_generate_now_draws_new_images_and_records_copies(cast: Path, capsys) -> None:
    code, out, _ = run(capsys, "generate", "aiko", "--count", "2", "--seed", "5", "--now")
    assert code == 0, out
    assert "new pending image(s) of aiko: 1, 2" in out
    # The same pinned seeds again: the same pictures, recorded as copies, no new image.
    code, out, _ = run(capsys, "generate", "aiko", "--count", "2", "--seed", "5", "--now")
    assert code == 0 and "a copy of image 1, no new image" in out and "new pending" not in out
    code, out, _ = run(capsys, "jobs", "list", "--status", "duplicate")
    assert out.count("duplicate") == 2


def test_train_refuses_without_ten_approved_images(cast: Path, capsys) -> None:
    approve(8)
    code, _, err = run(capsys, "train", "aiko")
    assert code == 2 and "aiko has 8/10 approved images" in one_error_line(err)
    code, _, err = run(capsys, "train", "nobody")
    assert code == 2 and "unknown character 'nobody'" in one_error_line(err)


def test_train_queues_a_run_for_the_daemon(cast: Path, capsys) -> None:
    approve(10)
    code, out, err = run(capsys, "train", "aiko", "--epochs", "3", "--learning-rate", "2e-4")
    assert code == 0, err
    run_id = out.split("queued as run ")[1].split(":")[0]
    with open_instance(cast / "dagster_home") as instance:
        queued = instance.get_run_by_id(run_id)
        # Queued, not run here: only the daemon's run queue starts it.
        assert queued.status == DagsterRunStatus.QUEUED
        assert queued.job_name == "training_job" and queued.tags["dagster/partition"] == "aiko"
        config = queued.run_config["ops"]["trained_lora"]["config"]
        assert config == {"epochs": 3, "learning_rate": 2e-4}
    code, out, _ = run(capsys, "runs", "--character", "aiko")
    assert code == 0 and run_id[:8] in out and "queued" in out
    code, out, _ = run(capsys, "runs", "--json")
    (summary,) = json.loads(out)
    assert (summary["run_id"], summary["status"], summary["character"]) == (
        run_id,
        "queued",
        "aiko",
    )
    assert summary["started_by"].startswith("cli:")
    # The review app sees the same queued run through the source `lora-pipeline review` hands
    # it (run_summaries, unfinished only), and links it to the Dagster UI.
    from lora_pipeline.cli.common import registry, settings
    from lora_pipeline.cli.review import dagster_runs
    from lora_pipeline.review.pipeline_state import character_states

    current = settings()
    with registry(current).session() as session:
        state = character_states(session, current, dagster_runs(current)())["aiko"]
    assert state["label"] == "training queued"
    assert state["lines"][0]["url"] == f"{current.dagster_ui_url}/runs/{run_id}"


def test_status_json_for_scripts(cast: Path, capsys) -> None:
    approve(3)
    code, out, _ = run(capsys, "status", "--json")
    (row,) = json.loads(out)
    assert code == 0 and (row["character"], row["project"]) == ("aiko", "demo")
    assert row["images"]["approved"] == 3 and row["release"] is None
    code, out, _ = run(capsys, "status")
    assert "aiko" in out and "   3" in out


def test_review_list_json_for_scripts(cast: Path, capsys) -> None:
    code, out, _ = run(capsys, "generate", "aiko", "--count", "2", "--now")
    assert code == 0, out
    code, out, _ = run(capsys, "review", "list", "--json")
    listed = json.loads(out)
    assert [image["id"] for image in listed] == [1, 2]
    assert {image["character"] for image in listed} == {"aiko"}
    assert all(isinstance(image["seed"], int) for image in listed)


def test_train_takes_the_checkpoint_of_the_projects_profile(
    cast: Path, capsys, monkeypatch, tiny_sd: Path
) -> None:
    approve(10)
    monkeypatch.delenv("LORA_PIPELINE_BASE_MODEL")
    monkeypatch.setenv("LORA_PIPELINE_BASE_MODEL", "")
    code, _, err = run(capsys, "train", "aiko")
    assert code == 2 and "no base model configured" in one_error_line(err)
    assert run(capsys, "project", "set", "demo", "--checkpoint", str(tiny_sd))[0] == 0
    code, out, err = run(capsys, "train", "aiko")
    assert code == 0 and "queued as run" in out, err
