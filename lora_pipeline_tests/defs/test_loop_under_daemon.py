"""The feedback loop under the real daemon (`lora-pipeline ui`, i.e. `dagster dev`, on an
SQLite instance in tmp): requested images and regenerations are run by the sensors, and every
request and every rejection brings a new, distinct pending image.

The waits below are deadlines for the daemon's sensors (ticks every 10 to 30 s) and runs, not
timed assertions: the test fails only if the image never comes.
"""

from __future__ import annotations

import pytest

from lora_pipeline.config import Settings
from lora_pipeline.registry import queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Feedback, GenerationJob, Image
from lora_pipeline_tests.defs.conftest import cli, wait_for

pytestmark = pytest.mark.slow


def pending(registry: Registry) -> list[Image]:
    with registry.session(readonly=True) as session:
        images = queries.pending_images(session, character_slug="aiko")
        session.expunge_all()
    return images


def answer_of(registry: Registry, feedback_id: int) -> tuple[Feedback, Image, GenerationJob] | None:
    """The rejection, once answered: its new image and the job that drew it."""
    with registry.session(readonly=True) as session:
        feedback = session.get(Feedback, feedback_id)
        if feedback.regeneration_state == "failed":
            pytest.fail(f"the regeneration of rejection {feedback_id} failed")
        if feedback.regeneration_image_id is None:
            return None
        image = session.get(Image, feedback.regeneration_image_id)
        job = session.get(GenerationJob, image.generation_job_id)
        session.expunge_all()
    return feedback, image, job


def test_every_request_and_every_rejection_brings_a_new_image(daemon) -> None:
    registry = Registry(Settings.current().database_url)
    # Twelve images asked for with the seed left empty: twelve distinct images.
    cli("generate", "aiko", "--count", "12")
    made = wait_for("12 pending images", lambda: len(pending(registry)) >= 12 or None, daemon)
    images = pending(registry)
    assert made and len(images) == 12
    assert len({i.sha256 for i in images}) == 12
    assert len({i.generation_params["seed"] for i in images}) == 12

    # Reject the newest image three times in a row, each time the answer to the last rejection.
    newest = max(images, key=lambda i: i.id)
    seen = {i.sha256 for i in images}
    for round_number in range(3):
        cli("review", "reject", str(newest.id), "--category", "bad-quality")
        with registry.session(readonly=True) as session:
            feedback_id = max(f.id for f in session.query(Feedback))
        feedback, image, job = wait_for(
            f"the answer to rejection {round_number + 1}",
            lambda fid=feedback_id: answer_of(registry, fid),
            daemon,
        )
        assert image.status == "pending" and image.sha256 not in seen
        assert image.provenance["answers_feedback"] == [feedback_id]
        assert image.generation_params["seed"] != newest.generation_params["seed"]
        assert feedback.regeneration_state == "done" and feedback.regeneration_run_id
        assert job.run_id == feedback.regeneration_run_id
        seen.add(image.sha256)
        newest = image
    with registry.session(readonly=True) as session:
        assert session.get(Image, images[-1].id).status in ("pending", "rejected")
        statuses = [i.status for i in session.query(Image)]
    assert statuses.count("rejected") == 3 and statuses.count("pending") == 12
    registry.dispose()
