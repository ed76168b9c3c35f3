"""The model runtime: models loaded once per process and released in one call; before training
ComfyUI is asked over real HTTP to free its VRAM (POST /free with the body ComfyUI needs), and a
ComfyUI that is down or refuses is reported, never fatal."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lora_pipeline import model_runtime
from lora_pipeline.config import Settings
from lora_pipeline.model_runtime import ModelConfigurationError, ModelRuntime
from lora_pipeline_tests.training.conftest import FakeComfyUI


def _runtime(tmp_path: Path, **values: object) -> ModelRuntime:
    return ModelRuntime(Settings.from_env(home=tmp_path, **values))


def test_comfyui_is_asked_to_unload_its_models(tmp_path: Path, comfyui: str) -> None:
    message = _runtime(tmp_path, comfyui_url=comfyui).free_comfyui_vram()
    assert FakeComfyUI.requests == [("/free", {"unload_models": True, "free_memory": True})]
    assert "unload its models" in message


def test_a_comfyui_that_is_down_does_not_stop_training(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = _runtime(tmp_path, comfyui_url=f"http://127.0.0.1:{port}").free_comfyui_vram()
    assert "could not ask ComfyUI" in message and "training anyway" in message


def test_a_refusing_comfyui_is_reported(tmp_path: Path, comfyui: str) -> None:
    message = _runtime(tmp_path, comfyui_url=comfyui + "prefix").free_comfyui_vram()
    assert "HTTP 500" in message and "training anyway" in message


def test_no_base_model_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORA_PIPELINE_BASE_MODEL", raising=False)
    with pytest.raises(ModelConfigurationError, match="no base model configured"):
        _runtime(tmp_path).base_model_id()


def test_a_model_is_loaded_once_and_released_in_one_call(tmp_path: Path, tiny_sd: Path) -> None:
    runtime = _runtime(tmp_path, base_model=str(tiny_sd), device="cpu")
    generator = runtime.generator()
    # Another runtime of the same configuration shares the loaded model.
    assert _runtime(tmp_path, base_model=str(tiny_sd), device="cpu").generator() is generator
    model_runtime.release_gpu_models()
    assert generator._pipe is None  # closed: its weights are gone
    assert runtime.generator() is not generator
    model_runtime.release_gpu_models()


def test_the_comfyui_client_survives_a_release(tmp_path: Path, comfyui: str) -> None:
    runtime = _runtime(tmp_path, comfyui_url=comfyui)
    client = runtime.comfyui_client()
    model_runtime.release_gpu_models()
    assert runtime.comfyui_client() is client
