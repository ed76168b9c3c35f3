from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.generation.local import (
    DiffusersGenerator,
    GenerationError,
    GenerationRequest,
    LoraSpec,
    SourceKind,
    resolve_model_source,
)
from lora_pipeline_tests.generation.tiny_assets import write_random_lora

REQUEST = GenerationRequest(prompt="a red fox", seed=3, steps=3, cfg=5.0, width=64, height=64)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_request_gives_the_same_pixels(generator: DiffusersGenerator) -> None:
    first = generator.generate(REQUEST)
    assert first.size == (64, 64)
    assert first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(generator.generate(REQUEST)))


def test_seed_prompt_and_negative_prompt_change_the_image(generator: DiffusersGenerator) -> None:
    base = pixels(generator.generate(REQUEST))
    for changed in (
        GenerationRequest(**{**REQUEST.__dict__, "seed": 4}),
        GenerationRequest(**{**REQUEST.__dict__, "negative_prompt": "blurry, lowres"}),
        GenerationRequest(**{**REQUEST.__dict__, "prompt": "a blue whale"}),
    ):
        assert not np.array_equal(base, pixels(generator.generate(changed))), changed


def test_size_and_sampler_are_honoured(generator: DiffusersGenerator) -> None:
    request = GenerationRequest(
        prompt="x", steps=3, width=48, height=32, sampler="dpmpp_2m", scheduler="karras"
    )
    image = generator.generate(request)
    assert image.size == (48, 32)
    euler = generator.generate(GenerationRequest(**{**request.__dict__, "sampler": "euler"}))
    assert not np.array_equal(pixels(image), pixels(euler))


def test_lora_strength_changes_the_image_and_is_cleaned_up(
    generator: DiffusersGenerator, random_lora: Path
) -> None:
    without = pixels(generator.generate(REQUEST))
    full = pixels(generator.generate(REQUEST, LoraSpec(random_lora, 1.0)))
    half = pixels(generator.generate(REQUEST, LoraSpec(random_lora, 0.5)))
    zero = pixels(generator.generate(REQUEST, LoraSpec(random_lora, 0.0)))
    after = pixels(generator.generate(REQUEST))
    assert not np.array_equal(without, full)
    assert not np.array_equal(full, half)
    assert np.array_equal(without, zero)
    assert np.array_equal(without, after), "the LoRA leaked into the next call"
    again = pixels(generator.generate(REQUEST, LoraSpec(random_lora, 1.0)))
    assert np.array_equal(full, again)


def test_a_lora_rewritten_in_place_is_loaded_afresh(
    generator: DiffusersGenerator, tiny_sd: Path, tmp_path: Path
) -> None:
    path = write_random_lora(tiny_sd, tmp_path / "char.safetensors", seed=1)
    first = pixels(generator.generate(REQUEST, LoraSpec(path)))
    write_random_lora(tiny_sd, path, seed=2)
    assert not np.array_equal(first, pixels(generator.generate(REQUEST, LoraSpec(path))))


def test_threads_share_one_pipeline(generator: DiffusersGenerator, random_lora: Path) -> None:
    expected = pixels(generator.generate(REQUEST, LoraSpec(random_lora)))
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(pixels(generator.generate(REQUEST, LoraSpec(random_lora))))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    assert all(np.array_equal(expected, result) for result in results)


def test_close_then_generate_loads_again(tiny_sd: Path) -> None:
    generator = DiffusersGenerator(str(tiny_sd), device="cpu", dtype="float32")
    first = pixels(generator.generate(REQUEST))
    generator.close()
    assert np.array_equal(first, pixels(generator.generate(REQUEST)))
    generator.close()


def test_missing_model_and_lora_are_clear_errors(
    generator: DiffusersGenerator, tmp_path: Path
) -> None:
    with pytest.raises(GenerationError, match="model not found"):
        DiffusersGenerator(str(tmp_path / "nothing.safetensors"))
    with pytest.raises(GenerationError, match="not a diffusers pipeline"):
        DiffusersGenerator(str(tmp_path))
    with pytest.raises(GenerationError, match="LoRA file not found"):
        generator.generate(REQUEST, LoraSpec(tmp_path / "gone.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(GenerationError, match="could not load LoRA"):
        generator.generate(REQUEST, LoraSpec(broken))
    assert np.array_equal(pixels(generator.generate(REQUEST)), pixels(generator.generate(REQUEST)))


def test_bad_requests_are_refused() -> None:
    with pytest.raises(GenerationError, match="multiple of 8"):
        GenerationRequest(prompt="x", width=50)
    with pytest.raises(GenerationError, match="steps"):
        GenerationRequest(prompt="x", steps=0)


def test_model_sources(tiny_sd: Path, tmp_path: Path) -> None:
    assert resolve_model_source(str(tiny_sd)).kind is SourceKind.FOLDER
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    assert resolve_model_source(str(checkpoint)).kind is SourceKind.SINGLE_FILE
    hub = resolve_model_source("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert hub.kind is SourceKind.HUB
    with pytest.raises(GenerationError, match="model not found"):
        resolve_model_source("/no/such/folder")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(GenerationError, match="not a checkpoint"):
        resolve_model_source(str(notes))


def test_a_stack_of_loras_applies_both_and_drops_zero_strengths(
    generator: DiffusersGenerator, random_lora: Path, tiny_sd: Path, tmp_path: Path
) -> None:
    other = write_random_lora(tiny_sd, tmp_path / "other.safetensors", seed=5)
    top = pixels(generator.generate(REQUEST, LoraSpec(random_lora)))
    stacked = pixels(generator.generate(REQUEST, [LoraSpec(other), LoraSpec(random_lora)]))
    assert not np.array_equal(top, stacked)
    assert np.array_equal(
        stacked, pixels(generator.generate(REQUEST, (LoraSpec(other), LoraSpec(random_lora))))
    )
    muted = [LoraSpec(other, 0.0), LoraSpec(random_lora)]
    assert np.array_equal(top, pixels(generator.generate(REQUEST, muted)))
    assert np.array_equal(
        pixels(generator.generate(REQUEST)), pixels(generator.generate(REQUEST, []))
    )
