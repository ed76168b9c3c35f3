"""The Train tab (seed 003's wizard, issue 15 item 4): every step over HTTP, each refusal in one
line, and Start queueing a real run on the SQLite Dagster instance through `train`'s helper."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from lora_pipeline.config import Settings
from lora_pipeline.defs.instance import open_instance
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.review.app import create_app
from lora_pipeline.review.views.approve import REVIEWER_COOKIE
from lora_pipeline_tests import test_cli
from lora_pipeline_tests.review.conftest import Studio, app_client, form_token

pytestmark = pytest.mark.slow
cast = test_cli.cast  # a home with `init` done, project demo and character aiko
JSON = {"accept": "application/json"}


def approve_tagged(studio: Studio, count: int, tags: list[str], first: int = 100) -> list[int]:
    ids = [studio.add_image("aiko", n) for n in range(first, first + count)]
    with studio.registry.session() as session:
        for image_id in ids:
            commands.approve_image(session, image_id)
        if tags:
            commands.tag_images(session, ids, tags, [], None)
    return ids


def test_train_page_lists_characters_and_the_steps(studio: Studio) -> None:
    page = studio.client.get("/train")
    assert page.status_code == 200
    assert '<a href="/train" class="active" aria-current="page">Train</a>' in page.text
    assert '<option value="aiko">aiko</option>' in page.text
    assert "train-start" not in page.text  # nothing to start before a character


def test_each_step_for_a_character(studio: Studio) -> None:
    approve_tagged(studio, 10, ["style:anime"])
    approve_tagged(studio, 2, [], first=200)
    plan = studio.client.get("/train/plan.json?character=aiko").json()
    assert plan["checkpoint"] == "/models/anime-v3.safetensors"
    assert plan["count"] == 12 and plan["shots"]["unknown"] == 12
    assert "no face detector configured" in plan["shots_note"]
    assert [c.split(",")[0] for c in plan["captions"]] == ["aiko"] * 3
    assert "teal hair" in plan["captions"][0]
    assert [p["name"] for p in plan["presets"]] == ["quick", "standard", "thorough"]
    standard = plan["presets"][1]
    assert (standard["epochs"], standard["steps"]) == (20, 240)  # 12 images, batch 1
    assert "no estimate yet" in standard["estimate"]
    assert plan["ready"] is True and plan["problems"] == {}
    tagged = studio.client.get("/train/plan.json?character=aiko&tags=style:anime").json()
    assert tagged["count"] == 10 and tagged["selection"]["tags"] == ["style:anime"]
    page = studio.client.get("/train?character=aiko&tags=style:anime").text
    assert "<strong>10</strong> approved image(s) match" in page
    assert 'id="train-start"' in page and 'id="train-start" disabled' not in page


@pytest.mark.parametrize(
    ("query", "step", "message"),
    [
        ("tags=outfit:none", "dataset", "aiko has 0/10 approved images matching outfit:none"),
        ("match=some", "dataset", "tag match must be one of"),
        ("caption=tags", "captions", "the 'tags' caption strategy needs a tagger"),
        ("caption=poetry", "captions", "unknown caption strategy 'poetry'"),
        ("preset=forever", "preset", "unknown preset 'forever'"),
    ],
)
def test_a_step_that_cannot_go_on_says_why_in_one_line(
    studio: Studio, query: str, step: str, message: str
) -> None:
    approve_tagged(studio, 10, [])
    plan = studio.client.get(f"/train/plan.json?character=aiko&{query}").json()
    assert plan["ready"] is False and message in plan["problems"][step]
    assert "\n" not in plan["problems"][step]
    page = html.unescape(studio.client.get(f"/train?character=aiko&{query}").text)
    assert message in page and 'id="train-start" disabled' in page
    refused = studio.client.post(
        "/train",
        data={"csrf_token": studio.csrf(), "character": "aiko", **dict([query.split("=")])},
    )
    assert refused.status_code == 400 and message in html.unescape(refused.text)


def test_no_checkpoint_is_refused_at_the_first_step(tmp_path: Path) -> None:
    from lora_pipeline_tests.review.conftest import make_settings, open_studio

    with open_studio(make_settings(tmp_path / "home", base_model=None)) as studio:
        plan = studio.client.get("/train/plan.json?character=aiko").json()
    assert "no base model configured" in plan["problems"]["checkpoint"]


def test_unknown_character_is_404(studio: Studio) -> None:
    assert studio.client.get("/train/plan.json?character=ghost").status_code == 404


def test_start_without_a_dagster_queue_says_so(studio: Studio) -> None:
    approve_tagged(studio, 10, [])
    response = studio.client.post(
        "/train", data={"csrf_token": studio.csrf(), "character": "aiko"}, headers=JSON
    )
    assert response.status_code == 503 and "lora-pipeline review" in response.json()["error"]


def test_start_queues_the_run_as_lora_pipeline_train_does(cast: Path) -> None:
    from lora_pipeline.cli.review import training_queue

    settings = Settings.current()
    registry = Registry(settings.database_url)
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        for n in range(12):
            image, _ = commands.add_image(
                session, aiko.id, f"{n:064x}", f"images/a{n}.png", 64, 64, "generated"
            )
            commands.approve_image(session, image.id)
        commands.tag_images(session, list(range(1, 11)), ["style:anime"], [], "character")
    registry.dispose()
    app = create_app(settings, submit_training=training_queue(settings))
    with app_client(app, cookies={REVIEWER_COOKIE: ""}) as anonymous:
        form = {"csrf_token": form_token(anonymous, "/train?character=aiko"), "character": "aiko"}
        refused = anonymous.post("/train", data=form, headers=JSON)
    assert refused.status_code == 400 and "reviewer name is required" in refused.json()["error"]
    with app_client(app) as client:
        token = form_token(client, "/train?character=aiko")
        form = {
            "csrf_token": token,
            "character": "aiko",
            "tags": "style:anime",
            "asset_type": "character",
            "caption": "design",
            "preset": "quick",
        }
        # The form's reviewer (scripts) wins over the browser's cookie.
        form["reviewer"] = "mika"
        response = client.post("/train", data=form, follow_redirects=False)
        assert response.status_code == 303, response.text
        run_id = response.headers["location"].split("run=")[1]
        page = client.get(response.headers["location"]).text
    assert f"Training queued as run {run_id}" in page
    with open_instance(cast / "dagster_home") as instance:
        queued = instance.get_run_by_id(run_id)
        assert queued.status == DagsterRunStatus.QUEUED
        assert queued.job_name == "training_job" and queued.tags["dagster/partition"] == "aiko"
        assert queued.tags["lora_pipeline/started_by"] == "review:mika"
        ops = queued.run_config["ops"]
        assert ops["approved_dataset"]["config"] == {
            "tags": ["asset_type:character", "style:anime"],
            "tag_match": "all",
        }
        assert ops["captions"]["config"] == {"strategy": "design"}
        assert ops["trained_lora"]["config"] == {"epochs": 10, "rank": 16}  # quick, 10 images


def test_the_wizard_in_chromium_queues_a_real_run(cast: Path, browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from lora_pipeline.cli.review import training_queue
    from lora_pipeline.review.app import background_server

    settings = Settings.current()
    registry = Registry(settings.database_url)
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        for n in range(12):
            image, _ = commands.add_image(
                session, aiko.id, f"{n:064x}", f"images/a{n}.png", 64, 64, "generated"
            )
            commands.approve_image(session, image.id)
        commands.tag_images(session, list(range(1, 11)), ["style:anime"], [], None)
    registry.dispose()
    app = create_app(settings, submit_training=training_queue(settings))
    with background_server(app) as base:
        context = browser.new_context()
        # The name this browser gave once on the Approve tab.
        context.add_cookies([{"name": "lp_reviewer", "value": "mika", "url": base}])
        page = context.new_page()
        page.goto(f"{base}/train")
        page.select_option("#train-character", "aiko")
        page.wait_for_selector("#train-count")
        assert page.inner_text("#train-count strong") == "12"
        page.fill("#train-tags", "style:nothing")
        expect(page.locator("#problem-dataset")).to_contain_text("0/10 approved images")
        expect(page.locator("#train-start")).to_be_disabled()
        page.fill("#train-tags", "style:anime")
        expect(page.locator("#train-count strong")).to_have_text("10")
        expect(page.locator("#train-start")).to_be_enabled()
        page.check("input[name=preset][value=quick]")
        expect(page.locator("input[data-mirror=preset]")).to_have_value("quick")
        page.screenshot(path=str(tmp_path / "train-wizard.png"), full_page=True)
        page.click("#train-start")
        page.wait_for_selector("p.notice")
        notice = page.inner_text("p.notice")
        page.screenshot(path=str(tmp_path / "train-queued.png"), full_page=True)
        context.close()
    run_id = notice.split("queued as run ")[1].split(";")[0]
    with open_instance(cast / "dagster_home") as instance:
        queued = instance.get_run_by_id(run_id)
        assert queued.status == DagsterRunStatus.QUEUED
        ops = queued.run_config["ops"]
        assert ops["approved_dataset"]["config"]["tags"] == ["style:anime"]
        assert ops["trained_lora"]["config"] == {"epochs": 10, "rank": 16}
        assert queued.tags["lora_pipeline/started_by"] == "review:mika"
