"""Training yields to interactive work under the real daemon: while a training of the tiny
model runs, a rejection arrives; its regeneration runs before the training ends, and the
training then completes every one of its steps.

Meanwhile the cockpit is watched as a reviewer sees it: `lora-pipeline review` in its own
process, its Characters tab open in Chromium and never reloaded, follows the real runs: the
training queued, at its steps, the pause for the regeneration, then the release."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dagster import AssetKey, DagsterRunStatus

from lora_pipeline.config import Settings
from lora_pipeline.defs.instance import open_instance, run_summaries
from lora_pipeline.registry import queries
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import Feedback, Image
from lora_pipeline_tests.defs.conftest import cli, wait_for
from lora_pipeline_tests.review.conftest import launch_chromium, review_app_process

pytestmark = pytest.mark.slow
STEPS = 400
Found = TypeVar("Found")


class CardWatcher:
    """aiko's card on the Characters tab, opened once: every distinct text it showed, and a
    screenshot each time its state label changed."""

    def __init__(self, page: Any, screenshots: Path) -> None:
        self.page, self.screenshots = page, screenshots
        self.seen: list[str] = []
        self.labels: list[str] = []

    def text(self) -> str:
        card = self.page.locator('[data-state-for="aiko"]')
        text, label = card.inner_text(), card.locator(".state-label").inner_text()
        if not self.seen or self.seen[-1] != text:
            self.seen.append(text)
        if not self.labels or self.labels[-1] != label:
            self.labels.append(label)
            shot = self.screenshots / f"card-{len(self.labels):02d}.png"
            self.page.screenshot(path=str(shot), full_page=True)
        return text

    def watching(self, probe: Callable[[], Found | None]) -> Callable[[], Found | None]:
        """The probe, looking at the card each time it is asked."""

        def both() -> Found | None:
            self.text()
            return probe()

        return both


@pytest.fixture
def card(daemon, tmp_path: Path) -> Iterator[CardWatcher]:
    with review_app_process(tmp_path / "review.log") as (url, _pid), launch_chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/")
        yield CardWatcher(page, tmp_path)


@pytest.fixture
def daemon_settings() -> dict[str, str]:
    # Yield at once (the default waits a minute of training first); no automatic training.
    return {"LORA_PIPELINE_TRAINING_MIN_RUN_S": "0", "LORA_PIPELINE_TRAINING_SETTLE_S": "86400"}


def training_state(settings: Settings, run_id: str) -> tuple[str, str | None]:
    with open_instance(settings.dagster_home) as instance:
        (summary,) = [s for s in run_summaries(instance, "aiko") if s.run_id == run_id]
    return summary.status, summary.progress


def test_a_regeneration_runs_while_a_training_is_paused_for_it(daemon, card, capsys) -> None:
    settings = Settings.current()
    registry = Registry(settings.database_url)
    cli("generate", "aiko", "--count", "11")

    def pending_ids() -> list[int] | None:
        with registry.session(readonly=True) as session:
            ids = [i.id for i in queries.pending_images(session, character_slug="aiko")]
        return ids if len(ids) >= 11 else None

    *to_approve, to_reject = sorted(wait_for("11 pending images", pending_ids, daemon))
    cli("review", "approve", *map(str, to_approve))
    capsys.readouterr()
    cli("train", "aiko", "--max-steps", str(STEPS), "--epochs", "40", "--no-samples")
    run_id = capsys.readouterr().out.split("queued as run ")[1].split(":")[0]
    # Once the training has reported an epoch it holds the GPU: then the rejection comes.
    epoch = card.watching(lambda: training_state(settings, run_id)[1])
    wait_for("a training epoch", epoch, daemon)
    cli("review", "reject", str(to_reject), "--category", "bad-quality")

    def regenerated() -> Image | None:
        with registry.session(readonly=True) as session:
            feedback = session.query(Feedback).one()
            image = session.get(Image, feedback.regeneration_image_id or 0)
            session.expunge_all()
        return image

    image = wait_for("the regenerated image", card.watching(regenerated), daemon)
    status, _ = training_state(settings, run_id)
    assert status == "started", "the regeneration came only after the training"
    wait_for(
        "the end of the training",
        card.watching(lambda: training_state(settings, run_id)[0] in ("success", "failure")),
        daemon,
    )
    with open_instance(settings.dagster_home) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(AssetKey("trained_lora"))
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["gpu_pauses"] >= 1, metadata
    with registry.session(readonly=True) as session:
        release = queries.latest_release(session, image.character_id)
        # Every step trained once: the pause neither repeated nor lost one.
        assert release.hyperparameters["steps"] == STEPS
        assert release.run_id == run_id
        release_id = release.id
    # The page, never reloaded, followed the runs: the steps, the pause, then the release.
    trained = f"trained: release {release_id} (gate: "
    wait_for("the release on the card", lambda: trained in card.text() or None, daemon)
    assert any(f"/{STEPS}" in text and "training" in text for text in card.seen), card.seen
    assert any("interactive job(s)" in text for text in card.seen), card.seen
    # Its counts too: the page opened before any image existed.
    progress = card.page.locator("#character-aiko .progress-text").inner_text()
    assert progress == "10 / 10 approved", progress
    print(json.dumps({"regenerated_image": image.id, "pauses": metadata["gpu_pauses"]}))
    registry.dispose()
