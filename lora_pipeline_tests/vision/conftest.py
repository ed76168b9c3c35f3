"""Tiny vision models built once per session and saved to disk like real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.vision.tiny import build_tiny_clip_vision, build_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.getbasetemp() / "models" / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip_vision(tmp_path_factory.getbasetemp() / "models" / "tiny-clip")
