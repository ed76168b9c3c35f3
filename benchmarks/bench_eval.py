"""Orchestration overhead of the eval grid: evaluate_release (epoch comparison, grid
composition, quality and LoRA-effect scores, cell PNGs, eval record, model card) against
rendering the same images directly with the generator backend."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from statistics import median

from PIL import Image

from benchmarks.run import Result
from lora_pipeline.evaluation.service import EvalScorers, evaluate_release, project_eval_spec
from lora_pipeline.generation.backends import LocalImageBackend
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest, LoraSpec
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Character
from lora_pipeline.tiny_models import build_tiny_sd
from lora_pipeline.vision.reference import ReferenceIdentifier
from lora_pipeline.vision.tiny import build_tiny_clip, build_tiny_clip_vision
from lora_pipeline_tests.generation.tiny_assets import write_random_lora

ROUNDS = 3
LORA = "loras/aiko/aiko.safetensors"


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _setup(home: Path) -> tuple[Registry, DataRoot, DiffusersGenerator, int]:
    sd = build_tiny_sd(home / "tiny-sd")
    root = DataRoot(home / "data")
    root.path(LORA).parent.mkdir(parents=True)
    write_random_lora(sd, root.path(LORA), seed=3)
    url = f"sqlite:///{home / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "bench", "Bench")
        aiko = commands.add_character(
            session, "bench", "aiko", "Aiko", steps=4, width=64, height=64
        )
        for shade in range(4):  # approved images: the identity score's references
            stored = root.put_image(Image.new("RGB", (64, 64), (40 * shade, 90, 160)))
            image, _ = commands.add_image(
                session, aiko.id, stored.sha256, stored.relpath, 64, 64, "upload"
            )
            commands.approve_image(session, image.id)
        release = commands.register_lora_release(
            session, aiko.id, None, LORA, sha256_file(root.path(LORA)), "tiny-sd", {"epochs": 1}
        )
        release_id = release.id
    return registry, root, DiffusersGenerator(str(sd), device="auto"), release_id


def _scorers(home: Path) -> EvalScorers:
    vision = build_tiny_clip_vision(home / "clip-vision")
    return EvalScorers(
        embedder=ReferenceIdentifier(str(vision), lambda _slug: [], device="cpu"),
        clip_model=str(build_tiny_clip(home / "clip")),
    )


def run() -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        registry, root, generator, release_id = _setup(Path(tmp))
        with registry.session() as session:
            character = session.get(Character, 1)
            assert character is not None
            spec = project_eval_spec(character)
        base = GenerationRequest(prompt="", steps=4, width=64, height=64)
        lora = root.path(LORA)
        generator.generate(base, LoraSpec(lora))  # load model and adapter outside the timings
        backend = LocalImageBackend(generator)

        def direct() -> None:
            for prompt in spec.prompts:
                for seed in spec.seeds:
                    for strength in spec.strengths:
                        request = replace(base, prompt=prompt, seed=seed)
                        backend.generate(request, LoraSpec(lora, strength))

        def evaluated() -> None:
            evaluate_release(registry, root, backend, release_id)

        scorers = _scorers(Path(tmp))

        def scored() -> None:
            evaluate_release(registry, root, backend, release_id, scorers)

        scored()  # load the CLIP models outside the timings
        baseline_runs, measured_runs, scored_runs = [], [], []
        for _ in range(ROUNDS):
            baseline_runs.append(_timed(direct))
            measured_runs.append(_timed(evaluated))
            scored_runs.append(_timed(scored))
        baseline, measured = median(baseline_runs), median(measured_runs)
        images = len(spec.prompts) * len(spec.seeds) * len(spec.strengths)
        registry.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    return Result(
        name="eval grid orchestration overhead (tiny SD, CPU)",
        measured_s=measured,
        baseline_s=baseline,
        baseline="the same images rendered directly with LocalImageBackend.generate",
        figures={
            "images_per_grid": images,
            "rounds": ROUNDS,
            "overhead_per_grid_ms": round((measured - baseline) * 1000, 1),
            # With the tiny identity and CLIP models scoring too (a real CLIP costs more).
            "ratio_with_identity_and_clip_scores": round(median(scored_runs) / baseline, 3),
        },
    )
