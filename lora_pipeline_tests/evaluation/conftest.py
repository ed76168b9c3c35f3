from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline_tests.generation.tiny_assets import write_random_lora


@pytest.fixture(scope="module")
def loras(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA that changes the image and one whose up weights are all zero (changes nothing)."""
    folder = tmp_path_factory.mktemp("eval-loras")
    return {
        "random": write_random_lora(tiny_sd, folder / "random.safetensors", seed=5),
        "zero": write_random_lora(tiny_sd, folder / "zero.safetensors", seed=5, scale=0.0),
    }
