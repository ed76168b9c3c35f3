"""What a GPU step leaves behind: the memory of this process (RSS on the CPU, and
`torch.cuda.memory_allocated` / `max_memory_allocated` when CUDA is there) before the model
runtime loads the generator, after it drew images, and after `release_gpu()`, which a training
calls before it starts. The time of the release is set against the time of the load.

RSS need not fall back to where it started (the allocator keeps freed pages for reuse): what
Python still holds in tensors, and CUDA's allocated bytes, must.
"""

from __future__ import annotations

import gc
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

from benchmarks.run import Result
from lora_pipeline.config import Settings
from lora_pipeline.generation.local import GenerationRequest
from lora_pipeline.model_runtime import ModelRuntime
from lora_pipeline.process_memory import process_memory
from lora_pipeline.tiny_models import build_tiny_sd

IMAGES = 4


def _memory() -> dict[str, float]:
    # What Python still holds in tensors: on the CPU, the measure of what is left.
    return {"live_tensors_mb": _live_tensor_bytes() / 2**20, **process_memory()}


def _live_tensor_bytes() -> int:
    import torch

    gc.collect()
    with warnings.catch_warnings():  # isinstance() on deprecated torch aliases warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _labelled(stage: str, figures: dict[str, float]) -> dict[str, float]:
    return {f"{stage}_{key}": round(value, 1) for key, value in figures.items()}


def run() -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_sd(Path(tmp) / "tiny-sd")
        settings = Settings.current().with_overrides(base_model=str(tiny))
        runtime = ModelRuntime(settings)
        before = _memory()
        request = GenerationRequest(prompt="aiko, teal hair", steps=4, width=64, height=64)
        start = time.perf_counter()
        generator = runtime.generator()
        generator.generate(request)  # the first image loads the pipeline
        loaded_s = time.perf_counter() - start
        for seed in range(1, IMAGES):
            generator.generate(replace(request, seed=seed))
        del generator
        drawn = _memory()
        start = time.perf_counter()
        runtime.release_gpu()
        released_s = time.perf_counter() - start
        after = _memory()
    return Result(
        name="memory a generation step leaves after release_gpu (tiny SD)",
        measured_s=released_s,
        baseline_s=loaded_s,
        baseline="loading the generator and drawing its first image",
        figures={
            "device": runtime.device_name(),
            "images": IMAGES,
            **_labelled("before", before),
            **_labelled("after_drawing", drawn),
            **_labelled("after_release", after),
        },
    )
