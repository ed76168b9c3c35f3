"""Fixtures shared by every test package: an isolated project home and a tiny SD on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lora_pipeline.generation.local import DiffusersGenerator

# No test may reach a model hub; the real loading code must read the files the tests build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny Stable Diffusion in diffusers layout, built once."""
    from lora_pipeline.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.getbasetemp() / "models" / "tiny-sd")


@pytest.fixture(scope="module")
def generator(tiny_sd: Path) -> Iterator[DiffusersGenerator]:
    from lora_pipeline.generation.local import DiffusersGenerator

    generator = DiffusersGenerator(str(tiny_sd), device="cpu")
    yield generator
    generator.close()


@pytest.fixture
def project_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_sd: Path) -> Iterator[Path]:
    """A fresh LORA_PIPELINE_HOME with an SQLite registry and Dagster home inside it."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(home))
    monkeypatch.setenv("LORA_PIPELINE_BASE_MODEL", str(tiny_sd))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    for name in ("DATABASE_URL", "DATA_ROOT", "COMFYUI_URL", "COMFYUI_LORAS_DIR"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    yield home
