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
def random_lora(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_lora(tiny_sd, tmp_path_factory.mktemp("loras") / "random.safetensors")
