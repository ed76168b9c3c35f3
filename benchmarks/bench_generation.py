"""Orchestration overhead of generation: the generated_images service (registry rows, job
states, content-addressed storage) against bare generator calls on the same requests."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.run import Result
from lora_pipeline.generation.backends import LocalImageBackend
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest
from lora_pipeline.generation.service import GenerationPlan, generate_for_character
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.tiny_models import build_tiny_sd

IMAGES = 8


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

        start = time.perf_counter()
        for seed in range(IMAGES):
            generator.generate(GenerationRequest(**{**request.__dict__, "seed": seed}))
        baseline = time.perf_counter() - start

        start = time.perf_counter()
        outcome = generate_for_character(
            registry,
            DataRoot(home / "data"),
            LocalImageBackend(generator),
            "aiko",
            GenerationPlan(count=IMAGES, seed=0),
            log=lambda _: None,
        )
        measured = time.perf_counter() - start
    return Result(
        name="generation orchestration overhead (tiny SD, CPU)",
        measured_s=measured,
        baseline_s=baseline,
        baseline="bare DiffusersGenerator.generate",
        figures={"images": len(outcome.image_ids), "per_image_s": round(measured / IMAGES, 4)},
    )
