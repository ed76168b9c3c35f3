"""`lora-pipeline demo`: the whole graph for one character on the CPU, from nothing.

It uses the toy world (`lora_pipeline.toy_world`): a tiny Stable Diffusion trained on figures of
shapes and colours, which draws the held-out figure aiko only roughly, and an identity model for
that world. The demo project's two characters are figures of it; a trailer of aiko's drawings is
ingested, the base model draws her, a reviewer approves the trailer's frames and rejects the
base model's off-model images, and the LoRA trained on the frames is evaluated with a real
identity score and gated at a threshold an untrained LoRA fails.
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
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.toy_world.models import TOY_IDENTITY, TOY_SD
from lora_pipeline.toy_world.probe import (
    DESCRIPTION,
    GATE_MIN_IDENTITY,
    GATE_STEPS,
    SEEDS,
    TRAINING,
    TRIGGER,
)
from lora_pipeline.toy_world.world import parse_figure, write_figure_video

Say = Callable[[str], None]

PROJECT = "demo"
# Figures of the toy world: the base model learnt kenji's colours, never aiko's combination.
CHARACTERS = {
    TRIGGER: DESCRIPTION,  # aiko, the learning tests' character
    "kenji": "black hair, green uniform, white scarf",
}
DEMO_CHARACTER = TRIGGER
TRAILER_FRAMES = 16
# The learning tests' LoRA settings and run length (toy_world.probe), at 64 px.
DEMO_TRAINING = {**TRAINING, "max_steps": GATE_STEPS, "resolution": 64}


class DemoFailed(PipelineError, RuntimeError):
    """A demo step did not finish; the message says which and where its logs are."""


def run_demo(settings: Settings, say: Say) -> None:
    started = time.monotonic()
    settings.ensure_dirs()
    say(f"toy world Stable Diffusion at {TOY_SD}")
    if not settings.base_model:
        # The demo's models become the configured ones, so `lora-pipeline ui` runs can use them.
        identity = None if settings.identity_model_id() else str(TOY_IDENTITY)
        save_settings(settings.home, base_model=str(TOY_SD), identity_model=identity)
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
            commands.add_project(session, PROJECT, "Demo Project")
        # The gate: her identity in the toy identity model's space, which a working LoRA
        # reaches and the base model does not (lora_pipeline_tests/toy_world).
        commands.update_project_settings(
            session,
            PROJECT,
            eval_prompts=[CHARACTERS[DEMO_CHARACTER]],
            eval_seeds=list(SEEDS),
            min_identity=GATE_MIN_IDENTITY,
        )
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
                steps=20,
                cfg=5.0,
                width=64,
                height=64,
                # Locked, so that a second demo run draws the images already reviewed.
                seed=7,
                seed_locked=True,
            )


def _request_video_ingest(registry: Registry, settings: Settings) -> int:
    figure = parse_figure(CHARACTERS[DEMO_CHARACTER])
    assert figure is not None  # the demo characters are figures of the toy world
    trailer = settings.home / "demo" / "trailer.mp4"
    video = write_figure_video(trailer, figure, count=TRAILER_FRAMES, seed=3)
    upload = store_upload(video, DataRoot(settings.data_root))
    with registry.session() as session:
        source = commands.create_source(
            session,
            PROJECT,
            upload.kind,
            upload.relpath,
            character_slug=DEMO_CHARACTER,
            fps=1.0,
            max_frames=TRAILER_FRAMES,
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
    """Judge pending images like a reviewer would: the trailer's frames are her, the base
    model's drawings are off-model (it never learnt her combination of colours)."""
    with registry.session() as session:
        pending = queries.pending_images(session, character_slug=DEMO_CHARACTER)
        frames = [image.id for image in pending if image.origin != "generated"]
        drawn = [image.id for image in pending if image.origin == "generated"]
        character_id = commands.get_character(session, DEMO_CHARACTER).id
        approved = queries.image_counts(session, character_id)["approved"]
    if not pending:
        if approved:  # a second demo run: the same seeds gave the images already reviewed
            return approved
        raise DemoFailed("nothing to review: ingest and generation produced no images")
    categories = ["wrong_appearance"]
    with registry.session() as session:
        for image_id in frames:
            commands.approve_image(session, image_id, reviewer="demo")
        for image_id in drawn:
            commands.reject_image(
                session,
                image_id,
                categories,
                notes="colours off-model",
                reviewer="demo",
                negative_terms=negative_terms_for(categories),
            )
    if drawn:
        say(
            f"rejected {len(drawn)} base-model images as {', '.join(categories)} "
            "(the rejection sensor regenerates them)"
        )
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
