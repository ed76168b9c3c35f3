from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline_tests.generation.tiny_assets import write_random_lora


@pytest.fixture(scope="module")
def random_lora(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_lora(tiny_sd, tmp_path_factory.mktemp("loras") / "random.safetensors")
