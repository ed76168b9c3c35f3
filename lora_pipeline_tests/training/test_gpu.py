"""Before training, ComfyUI is asked over real HTTP to free its VRAM (POST /free with the body
ComfyUI needs); a ComfyUI that is down or refuses is reported, never fatal."""

from __future__ import annotations

import socket

from lora_pipeline.training.gpu import free_comfyui_vram
from lora_pipeline_tests.training.conftest import FakeComfyUI


def test_comfyui_is_asked_to_unload_its_models(comfyui: str) -> None:
    message = free_comfyui_vram(comfyui)
    assert FakeComfyUI.requests == [("/free", {"unload_models": True, "free_memory": True})]
    assert "unload its models" in message


def test_a_comfyui_that_is_down_does_not_stop_training() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = free_comfyui_vram(f"http://127.0.0.1:{port}", timeout=2)
    assert "could not ask ComfyUI" in message and "training anyway" in message


def test_a_refusing_comfyui_is_reported(comfyui: str) -> None:
    message = free_comfyui_vram(comfyui + "prefix")
    assert "answered 500" in message
