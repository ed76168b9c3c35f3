"""The feedback loop end to end: a rejection in the app → rejection sensor → regeneration run
→ a new pending image with the negatives; a Generate request → generation request sensor → run.
Real Dagster (SQLite instance), real tiny SD on the CPU."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context
from PIL import Image as PILImage

from lora_pipeline.config import Settings
from lora_pipeline.defs.instance import materialize_partition, open_instance, prepare_dagster_home
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import generation_request_sensor, rejection_sensor
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries, suggestions
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Feedback, GenerationJob, Image
from lora_pipeline.review.app import create_app
from lora_pipeline_tests.review.conftest import app_client, form_token

pytestmark = pytest.mark.slow


class Loop:
    def __init__(self, settings: Settings, instance: DagsterInstance) -> None:
        self.settings = settings
        self.instance = instance
        self.client = app_client(create_app(settings))
        self.registry = Registry(settings.database_url)
        self.root = DataRoot(settings.data_root)

    def csrf(self) -> str:
        return form_token(self.client)

    def evaluate(self, sensor, cursor: str | None = None) -> SensorResult:
        context = build_sensor_context(
            instance=self.instance,
            cursor=cursor,
            resources={"registry": RegistryResource(database_url=self.registry.url)},
        )
        return sensor(context)

    def add_pending(self, n: int) -> int:
        stored = self.root.put_image(PILImage.new("RGB", (64, 64), (n, 40, 200)))
        with self.registry.session() as session:
            aiko = commands.get_character(session, "aiko")
            image, _ = commands.add_image(
                session, aiko.id, stored.sha256, stored.relpath, 64, 64, "generated"
            )
            return image.id


@pytest.fixture
def loop(project_home: Path) -> Iterator[Loop]:
    settings = Settings.from_env()
    prepare_dagster_home(settings.dagster_home)
    with open_instance(settings.dagster_home) as instance:
        loop = Loop(settings, instance)
        with loop.registry.session() as session:
            commands.add_project(session, "demo", "Demo", style_prompt="anime style")
            commands.add_character(
                session,
                "demo",
                "aiko",
                "Aiko",
                design_prompt="teal hair, yellow raincoat",
                negative_prompt="lowres",
                steps=2,
                cfg=5.0,
                width=64,
                height=64,
                seed=3,
            )
        yield loop
        loop.registry.dispose()


def test_reject_in_the_app_regenerates_with_the_negatives(loop: Loop) -> None:
    image_id = loop.add_pending(1)
    response = loop.client.post(
        f"/images/{image_id}/reject",
        data={
            "csrf_token": loop.csrf(),
            "category": ["wrong_style", "bad_quality"],
            "notes": "too noisy",
            "prompt_edit": "teal hair, yellow raincoat",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    with loop.registry.session() as session:
        feedback_id = session.query(Feedback.id).filter(Feedback.image_id == image_id).scalar()

    result = loop.evaluate(rejection_sensor)
    (run,) = result.run_requests
    assert run.partition_key == "aiko"
    assert loop.evaluate(rejection_sensor, result.cursor).run_requests == []
    assert materialize_partition(
        loop.instance, "aiko", ["generated_images"], run.run_config, run.tags
    )
    with loop.registry.session() as session:
        (new,) = queries.pending_images(session, character_slug="aiko")
        assert new.provenance["answers_feedback"] == [feedback_id]
        assert new.generation_params["negative_prompt"] == (
            "lowres, wrong art style, blurry, low quality"
        )
        assert session.get(Feedback, feedback_id).regeneration_state == "done"
        assert session.get(Image, image_id).status == "rejected"
    # The new image is in the queue, linked to the rejection it answers.
    page = loop.client.get("/approve").text
    assert f'data-image-id="{new.id}"' in page and "answers rejection" in page


def test_three_rejections_lead_to_a_suggestion_accepted_in_one_click(loop: Loop) -> None:
    token = loop.csrf()
    for n in range(3):
        image_id = loop.add_pending(n)
        loop.client.post(
            f"/images/{image_id}/reject",
            data={"csrf_token": token, "category": ["not_solo"], "notes": "should have a scarf"},
        )
    (run,) = loop.evaluate(rejection_sensor).run_requests
    config = run.run_config["ops"]["generated_images"]["config"]
    assert len(config["feedback_ids"]) == 3 and config["count"] == 1
    assert materialize_partition(
        loop.instance, "aiko", ["generated_images"], run.run_config, run.tags
    )
    with loop.registry.session() as session:
        (suggestion,) = suggestions.open_suggestions(session).values()
    assert suggestion.suggested_prompt == "solo, teal hair, yellow raincoat, scarf"
    page = loop.client.get("/").text
    assert "solo, teal hair, yellow raincoat, scarf" in page
    accept = re.search(r'action="(/suggestions/\d+/accept)"', page).group(1)
    loop.client.post(accept, data={"csrf_token": token})
    with loop.registry.session() as session:
        assert commands.get_character(session, "aiko").design_prompt == suggestion.suggested_prompt


def test_generate_request_in_the_app_is_run_by_the_sensor(loop: Loop) -> None:
    loop.client.post(
        "/generate",
        data={"csrf_token": loop.csrf(), "character": "aiko", "kind": "image", "seed": "77"},
    )
    with loop.registry.session() as session:
        (job,) = session.query(GenerationJob).all()
        assert job.status == "pending"
    result = loop.evaluate(generation_request_sensor)
    (run,) = result.run_requests
    assert run.run_key == f"generate-aiko-{job.id}"
    assert run.run_config["ops"]["generated_images"]["config"] == {"job_ids": [job.id]}
    assert result.cursor == str(job.id)
    assert loop.evaluate(generation_request_sensor, result.cursor).run_requests == []
    assert materialize_partition(
        loop.instance, "aiko", ["generated_images"], run.run_config, run.tags
    )
    jobs = loop.client.get("/jobs.json").json()["jobs"]
    assert [(j["id"], j["status"], j["seed"]) for j in jobs] == [(job.id, "completed", 77)]
    with loop.registry.session() as session:
        (image,) = queries.pending_images(session, character_slug="aiko")
        assert image.generation_job_id == job.id and image.generation_params["seed"] == 77
    gallery = loop.client.get("/gallery").text
    assert f'href="/gallery/{image.id}"' in gallery
