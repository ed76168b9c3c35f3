"""Pipeline state on the Characters and Approve tabs (issue 15 item 1, issue 14's pause line):
queued regenerations and trainings with what they wait behind on the GPU, a training's
step/total, loss, ETA, sample and pauses from the trainer's status file, the release and its
gate, each linked to its Dagster run; over HTTP and in Chromium without a reload.

The Dagster runs come from a fake run source (what `lora-pipeline review` builds from
`defs.instance.run_summaries`); the trainer's progress is written to its status file as the
training child and the run worker write it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.registry import commands
from lora_pipeline.review.app import create_app
from lora_pipeline.training.status import status_path, update_status
from lora_pipeline_tests.review.conftest import Studio, add_cast, app_client, make_settings
from lora_pipeline_tests.review.test_releases import add_release

RUN = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"
REGEN_RUN = "aa11bb22cc33dd44ee55ff6600778899"


@dataclass
class FakeRun:
    run_id: str
    job: str
    character: str | None
    status: str
    step: str | None = None


@pytest.fixture
def runs() -> list[FakeRun]:
    return []


@pytest.fixture
def studio(tmp_path: Path, runs: list[FakeRun]) -> Iterator[Studio]:
    from lora_pipeline.media.store import DataRoot
    from lora_pipeline.registry.db import Registry

    settings = make_settings(tmp_path / "home")
    app = create_app(settings, runs=lambda: list(runs))
    registry = Registry(settings.database_url)
    add_cast(registry)
    with app_client(app) as client:
        yield Studio(settings, registry, DataRoot(settings.data_root), app, client)
    registry.dispose()


def state(studio: Studio, slug: str = "aiko") -> dict:
    return studio.client.get("/state.json").json()["characters"][slug]


def hold_gpu(studio: Studio, holder: str) -> None:
    folder = Path(studio.settings.gpu_lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"holder": holder, "pid": 1, "since": "2026-12-03T23:00:00", "priority": "batch"}
    (folder / "gpu-cpu.holder.json").write_text(json.dumps(record))


def reject_for_regeneration(studio: Studio, run_id: str | None) -> None:
    image_id = studio.add_image("aiko", 900)
    with studio.registry.session() as session:
        row = commands.reject_image(session, image_id, ["wrong_style"])
        row.regeneration_state = "requested" if run_id else "queued"
        row.regeneration_run_id = run_id


def write_progress(studio: Studio, **values) -> Path:
    return update_status(status_path(studio.settings.data_root, "aiko"), run_id=RUN, **values)


def sample(studio: Studio) -> str:
    path = studio.root.path("loras/aiko/samples/epoch-1.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (10, 200, 90)).save(path)
    return str(path)


def approve_ten(studio: Studio) -> None:
    for n in range(10):
        studio.add_image("aiko", n + 1, status="approved")


def test_a_regeneration_queued_behind_a_training_says_so_and_links_its_run(
    studio: Studio, runs: list[FakeRun]
) -> None:
    ui = studio.settings.dagster_ui_url
    reject_for_regeneration(studio, REGEN_RUN)
    runs.append(FakeRun(REGEN_RUN, "regenerate_job", "aiko", "queued"))
    hold_gpu(studio, "run 5f0c1d2e trained_lora [aiko]")
    (line,) = state(studio)["lines"]
    assert line["kind"] == "regeneration" and line["state"] == "queued"
    assert "1 regeneration(s) queued" in line["text"]
    assert "held by run 5f0c1d2e trained_lora [aiko]" in line["text"]
    assert line["url"] == f"{ui}/runs/{REGEN_RUN}"
    runs[0].status, runs[0].step = "started", "generated_images"
    (line,) = state(studio)["lines"]
    assert line["state"] == "running" and "running (generated_images)" in line["text"]


def test_training_queued_running_paused_then_trained(studio: Studio, runs: list[FakeRun]) -> None:
    approve_ten(studio)
    assert state(studio)["label"] == "ready for training"
    runs.append(FakeRun(RUN, "training_job", "aiko", "queued"))
    queued = state(studio)
    assert queued["label"] == "training queued"
    assert queued["lines"][0]["url"].endswith(f"/runs/{RUN}")
    runs[0].status, runs[0].step = "started", "trained_lora"
    progress = {"step": 5, "total_steps": 20, "loss": 0.1234, "eta_s": 75}
    write_progress(studio, state="running", sample=sample(studio), **progress)
    running = state(studio)
    assert running["label"] == "training…"
    (line,) = running["lines"]
    assert "step 5/20" in line["text"] and "loss 0.1234" in line["text"]
    assert "ETA 1 min 15 s" in line["text"]
    sample_url = running["training"]["sample_url"]
    assert sample_url == "/state/aiko/sample"
    served = studio.client.get(sample_url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    write_progress(
        studio, state="paused", paused_jobs=2, paused_count=1, paused_s=3.0, paused_since=None
    )
    paused = state(studio)
    assert paused["label"] == "training… (paused)"
    assert "training paused for 2 interactive job(s), 3 s" in paused["lines"][0]["text"]
    runs[0].step = "eval_grid"
    write_progress(studio, state="trained")
    assert state(studio)["label"] == "evaluating…"
    runs.clear()
    release_id = add_release(studio)
    with studio.registry.session() as session:
        commands.record_eval(session, release_id, {}, "g.png", [], {}, "unverified")
    done = state(studio)
    assert done["label"] == f"trained: release {release_id} (gate: unverified)"
    page = studio.client.get("/").text
    assert f"trained: release {release_id} (gate: unverified)" in page
    assert 'data-state-for="aiko"' in studio.client.get("/approve?character=aiko").text
    # A release trained on 3 images while 10 are approved: ready for training again.
    add_release(studio, n=2, dataset="0123456789abcdef")
    assert state(studio)["label"] == "ready for training"


def test_the_sample_is_served_only_from_inside_the_data_root(
    studio: Studio, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    write_progress(studio, state="running", sample=str(outside))
    assert studio.client.get("/state/aiko/sample").status_code == 404
    assert studio.client.get("/state/..%2F..%2Fetc/sample").status_code == 404
    assert studio.client.get("/state/kenji/sample").status_code == 404


# --- in Chromium: the page changes by itself --------------------------------------------------


def test_the_characters_tab_follows_a_training_without_a_reload(
    studio: Studio, runs: list[FakeRun], tmp_path: Path, browser
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from lora_pipeline.review.app import background_server

    hold_gpu(studio, "run 0badc0de generated_images [kenji]")
    with background_server(studio.app) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        card = page.locator('[data-state-for="aiko"]')
        section = page.locator("#character-aiko")
        sync_api.expect(section.locator(".progress-text")).to_have_text("0 / 10 approved")
        # Images approved after the page opened: its counts and progress follow.
        approve_ten(studio)
        studio.add_image("aiko", 11)
        sync_api.expect(section.locator(".progress-text")).to_have_text("10 / 10 approved")
        sync_api.expect(section.locator(".count-pending")).to_have_text("1 pending")
        sync_api.expect(section.locator(".counts")).to_contain_text("11 — ")
        sync_api.expect(card.locator(".state-label")).to_have_text("ready for training")
        runs.append(FakeRun(RUN, "training_job", "aiko", "queued"))
        sync_api.expect(card.locator(".state-label")).to_have_text("training queued")
        sync_api.expect(card).to_contain_text("held by run 0badc0de generated_images [kenji]")
        runs[0].status, runs[0].step = "started", "trained_lora"
        progress = {"step": 12, "total_steps": 40, "loss": 0.0871, "eta_s": 30}
        write_progress(studio, state="running", sample=sample(studio), **progress)
        sync_api.expect(card).to_contain_text("step 12/40")
        sync_api.expect(card.locator("img.state-sample")).to_be_visible()
        link = card.locator("a", has_text="step 12/40")
        assert link.get_attribute("href") == f"{studio.settings.dagster_ui_url}/runs/{RUN}"
        page.screenshot(path=str(tmp_path / "state-training.png"), full_page=True)
        write_progress(studio, state="paused", paused_jobs=1, paused_count=1, paused_s=4.0)
        sync_api.expect(card).to_contain_text("training paused for 1 interactive job(s)")
        page.screenshot(path=str(tmp_path / "state-paused.png"), full_page=True)
        runs.clear()
        write_progress(studio, state="trained")
        release_id = add_release(studio)
        with studio.registry.session() as session:
            commands.record_eval(session, release_id, {}, "g.png", [], {}, "unverified")
        expected = f"trained: release {release_id} (gate: unverified)"
        sync_api.expect(card.locator(".state-label")).to_have_text(expected)
        page.screenshot(path=str(tmp_path / "state-trained.png"), full_page=True)
    assert (tmp_path / "state-trained.png").stat().st_size > 0
