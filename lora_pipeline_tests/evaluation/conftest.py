from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_pipeline.generation.local import DiffusersGenerator
from lora_pipeline_tests.generation.tiny_assets import session_tiny_sd, write_random_lora


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_tiny_sd(tmp_path_factory)


@pytest.fixture(scope="module")
def generator(tiny_sd: Path) -> Iterator[DiffusersGenerator]:
    generator = DiffusersGenerator(str(tiny_sd), device="cpu")
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def loras(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA that changes the image and one whose up weights are all zero (changes nothing)."""
    folder = tmp_path_factory.mktemp("eval-loras")
    return {
        "random": write_random_lora(tiny_sd, folder / "random.safetensors", seed=5),
        "zero": write_random_lora(tiny_sd, folder / "zero.safetensors", seed=5, scale=0.0),
    }
