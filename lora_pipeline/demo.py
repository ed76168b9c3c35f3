"""`lora-pipeline demo`: the whole graph for one character on the CPU, from nothing.

It builds a tiny randomly initialised Stable Diffusion, a demo project with two characters and a
synthetic video, then drives the same code paths people and sensors do: an ingest request,
generation, a reviewer's approvals and a rejection, and the training run through eval_grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lora_pipeline.config import Settings, save_settings
from lora_pipeline.defs.instance import (
    ensure_partitions,
    materialize_partition,
    open_instance,
    prepare_dagster_home,
)
from lora_pipeline.errors import PipelineError
from lora_pipeline.evaluation.service import model_card_path
from lora_pipeline.generation.negatives import negative_terms_for
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.uploads import store_upload
from lora_pipeline.media.video import make_synthetic_video
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.tiny_models import build_tiny_sd

Say = Callable[[str], None]

PROJECT = "demo"
CHARACTERS = {
    "aiko": "1girl, short teal hair, yellow raincoat, red boots",
    "kenji": "1boy, spiky black hair, green school uniform",
}
DEMO_CHARACTER = "aiko"
DEMO_TRAINING = {"epochs": 2, "rank": 4, "alpha": 4.0, "learning_rate": 1e-3}


class DemoFailed(PipelineError, RuntimeError):
    """A demo step did not finish; the message says which and where its logs are."""


def run_demo(settings: Settings, say: Say) -> None:
    started = time.monotonic()
    settings.ensure_dirs()
    model_dir = build_tiny_sd(settings.home / "models" / "tiny-sd")
    say(f"tiny Stable Diffusion at {model_dir}")
    if not settings.base_model:
        # The demo's model becomes the configured one, so `lora-pipeline ui` runs can use it.
        save_settings(settings.home, base_model=str(model_dir))
        settings = Settings.current()
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    prepare_dagster_home(settings.dagster_home)
    instance = open_instance(settings.dagster_home)
    _create_cast(registry)
    ensure_partitions(instance, sorted(CHARACTERS))

    source_id = _request_video_ingest(registry, settings)
    say(f"ingest request {source_id}: a synthetic video for {DEMO_CHARACTER}")
    _run(instance, ["ingested_frames", "classified_frames"], say, source_id=source_id)
    _run(instance, ["generated_images"], say, count=4)
    approved = _review(registry, say)
    say(f"approved {approved} images of {DEMO_CHARACTER}")
    _run(
        instance, ["approved_dataset", "captions", "shot_splits", "trained_lora", "eval_grid"], say
    )
    _report(registry, settings, say, time.monotonic() - started)


def _create_cast(registry: Registry) -> None:
    """The demo project and characters; a second demo run reuses them."""
    with registry.session() as session:
        if PROJECT not in {p.slug for p in queries.list_projects(session)}:
            commands.add_project(session, PROJECT, "Demo Project", style_prompt="anime style")
        existing = set(queries.character_slugs(session))
        for slug, prompt in CHARACTERS.items():
            if slug in existing:
                continue
            commands.add_character(
                session,
                PROJECT,
                slug,
                slug.title(),
                design_prompt=prompt,
                negative_prompt="lowres",
                steps=4,
                cfg=5.0,
                width=64,
                height=64,
                # Locked, so that a second demo run draws the images already reviewed.
                seed=7,
                seed_locked=True,
            )


def _request_video_ingest(registry: Registry, settings: Settings) -> int:
    video = make_synthetic_video(settings.home / "demo" / "trailer.mp4", seconds=8, scenes=4)
    upload = store_upload(video, DataRoot(settings.data_root))
    with registry.session() as session:
        source = commands.create_source(
            session,
            PROJECT,
            upload.kind,
            upload.relpath,
            character_slug=DEMO_CHARACTER,
            fps=2.0,
            max_frames=16,
        )
        return source.id


def _run(
    instance, selection: list[str], say: Say, source_id: int | None = None, count: int | None = None
) -> None:
    config: dict = {}
    if source_id is not None:
        config = {"ops": {"ingested_frames": {"config": {"source_ids": [source_id]}}}}
    if count is not None:
        config = {"ops": {"generated_images": {"config": {"count": count}}}}
    if "trained_lora" in selection:
        # A short run suits the tiny random model; real models take the smart defaults.
        config = {"ops": {"trained_lora": {"config": DEMO_TRAINING}}}
    say(f"materialising {', '.join(selection)} for {DEMO_CHARACTER} …")
    if not materialize_partition(
        instance, DEMO_CHARACTER, selection, config, tags={"lora_pipeline/started_by": "demo"}
    ):
        raise DemoFailed(f"the run of {selection} failed; `lora-pipeline ui` shows its logs")


def _review(registry: Registry, say: Say) -> int:
    """Approve pending images like a reviewer would; reject one with feedback."""
    with registry.session() as session:
        pending = queries.pending_images(session, character_slug=DEMO_CHARACTER)
        ids = [image.id for image in pending]
        character_id = commands.get_character(session, DEMO_CHARACTER).id
        approved = queries.image_counts(session, character_id)["approved"]
    if not ids:
        if approved:  # a second demo run: the same seeds gave the images already reviewed
            return approved
        raise DemoFailed("nothing to review: ingest and generation produced no images")
    rejected, to_approve = ids[-1], ids[:-1]
    categories = ["wrong_style", "bad_quality"]
    with registry.session() as session:
        for image_id in to_approve:
            commands.approve_image(session, image_id, reviewer="demo")
        commands.reject_image(
            session,
            rejected,
            categories,
            notes="too noisy",
            reviewer="demo",
            negative_terms=negative_terms_for(categories),
        )
    say(f"rejected image {rejected} as {', '.join(categories)} (the rejection sensor regenerates)")
    with registry.session() as session:
        return queries.image_counts(session, character_id)["approved"]


def _report(registry: Registry, settings: Settings, say: Say, seconds: float) -> None:
    with registry.session() as session:
        character = commands.get_character(session, DEMO_CHARACTER)
        release = queries.latest_release(session, character.id)
        evaluation = queries.latest_eval(session, release.id) if release else None
    if release is None or evaluation is None:
        raise DemoFailed("the training run ended without an evaluated LoRA release")
    say(f"LoRA release {release.id} ({release.status}) at {settings.data_root / release.path}")
    reasons = "; ".join(evaluation.scores.get("gate_reasons") or [])
    say(
        f"eval grid {settings.data_root / evaluation.grid_path}: gate {evaluation.verdict}"
        + (f" ({reasons})" if reasons else "")
    )
    say(f"model card {model_card_path(DataRoot(settings.data_root), release.path)}")
    if evaluation.verdict == "pass":
        say(f"put it in production: lora-pipeline release activate {release.id}")
    say(f"demo finished in {seconds:.0f} s; see it with `lora-pipeline ui` (http://127.0.0.1:3000)")
