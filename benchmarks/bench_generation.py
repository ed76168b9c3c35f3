"""Orchestration overhead of generation: the generated_images service (registry rows, job
states, content-addressed storage) against bare generator calls on the same requests."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from statistics import median

from benchmarks.run import Result
from lora_pipeline.generation.backends import LocalImageBackend
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest
from lora_pipeline.generation.service import GenerationPlan, generate_for_character
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.tiny_models import build_tiny_sd

IMAGES = 8
ROUNDS = 3


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run() -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        generator = DiffusersGenerator(str(build_tiny_sd(home / "tiny-sd")), device="auto")
        url = f"sqlite:///{home / 'registry.db'}"
        migrate(url)
        registry = Registry(url)
        with registry.session() as session:
            commands.add_project(session, "bench", "Bench")
            commands.add_character(
                session,
                "bench",
                "aiko",
                "Aiko",
                design_prompt="teal hair",
                steps=4,
                width=64,
                height=64,
                seed=1,
            )
        request = GenerationRequest(prompt="aiko, teal hair", steps=4, width=64, height=64)
        generator.generate(request)  # load once, outside both timings
        root, backend = DataRoot(home / "data"), LocalImageBackend(generator)

        def bare() -> None:
            for seed in range(IMAGES):
                generator.generate(replace(request, seed=seed))

        def orchestrated() -> None:
            plan = GenerationPlan(count=IMAGES, seed=0)
            generate_for_character(registry, root, backend, "aiko", plan, log=lambda _: None)

        # Alternate the two, several rounds, and keep the medians: a busy machine slows both.
        baseline_runs, measured_runs = [], []
        for _ in range(ROUNDS):
            baseline_runs.append(_timed(bare))
            measured_runs.append(_timed(orchestrated))
        baseline, measured = median(baseline_runs), median(measured_runs)
    return Result(
        name="generation orchestration overhead (tiny SD, CPU)",
        measured_s=measured,
        baseline_s=baseline,
        baseline="bare DiffusersGenerator.generate",
        figures={
            "images_per_round": IMAGES,
            "rounds": ROUNDS,
            "per_image_s": round(measured / IMAGES, 4),
            "overhead_per_image_ms": round((measured - baseline) / IMAGES * 1000, 1),
        },
    )
