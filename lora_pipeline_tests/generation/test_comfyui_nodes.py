"""Workflows run only where their nodes exist: the shipped templates checked against the
`/object_info` captured from a stock ComfyUI v0.8.0 (node types, input names, link types and
choices), and a server without the video template's custom nodes refusing it before anything is
queued, in one line naming the nodes and the packs that provide them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lora_pipeline.generation.backends import ComfyUIImageBackend, ComfyUIVideoBackend
from lora_pipeline.generation.comfyui import ComfyUIClient, ComfyUIMissingNodesError
from lora_pipeline.generation.local import GenerationRequest
from lora_pipeline.generation.workflows import WorkflowSettings, character_workflow
from lora_pipeline_tests.generation.fake_comfyui import FakeComfyUI, stock_object_info

VIDEO_PACKS = {"AnimateDiff-Evolved", "VideoHelperSuite"}
SETTINGS = WorkflowSettings(
    checkpoint="random_sd15.safetensors",
    prompt="aiko, teal hair",
    negative_prompt="lowres",
    seed=5,
    steps=2,
    width=64,
    height=64,
    filename_prefix="aiko",
)
REQUEST = GenerationRequest("aiko, teal hair", "lowres", 5, steps=2, width=64, height=64)


def _spec_type(spec: list[Any]) -> str | list[Any]:
    """An object_info input spec's type: a link/value type name, or the list of choices."""
    kind = spec[0]
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options", []))
    return kind


def problems_against(info: dict[str, Any], workflow: dict[str, Any]) -> list[str]:
    """What ComfyUI's validation would refuse in `workflow`, given its object_info."""
    found: list[str] = []
    for node_id, node in workflow.items():
        schema = info.get(node["class_type"])
        if schema is None:
            found.append(f"{node_id}: no node type {node['class_type']}")
            continue
        declared = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
        for name in schema["input"].get("required", {}):
            if name not in node["inputs"]:
                found.append(f"{node_id}: required input {name} missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                found.append(f"{node_id}: unknown input {name}")
                continue
            expected = _spec_type(declared[name])
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = info.get(workflow[value[0]]["class_type"])
                if source is None:
                    continue  # reported as its own node's problem
                produced = source["output"][value[1]]
                if produced != expected:
                    found.append(f"{node_id}.{name}: gets {produced}, takes {expected}")
            elif isinstance(expected, list) and expected and value not in expected:
                found.append(f"{node_id}.{name}: {value!r} is not one of its choices")
    return found


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        server.loras.append("aiko-0123abcd.safetensors")
        yield server


def test_the_image_template_is_valid_on_stock_comfyui(fake: FakeComfyUI) -> None:
    info = fake.object_info()
    assert info.keys() == stock_object_info().keys() and len(info) == 543
    for lora in (None, "aiko-0123abcd.safetensors"):
        workflow = character_workflow("image", SETTINGS, lora)
        assert problems_against(info, workflow) == [], lora
    # The check can fail: a misspelled input and a wrong link are found.
    broken = character_workflow("image", SETTINGS, "aiko-0123abcd.safetensors")
    sampler = next(n for n in broken.values() if n["class_type"] == "KSampler")
    sampler["inputs"]["latent"] = sampler["inputs"].pop("latent_image")
    sampler["inputs"]["model"][1] = 1  # LoraLoader's CLIP output
    found = problems_against(info, broken)
    assert any("required input latent_image missing" in p for p in found), found
    assert any("model: gets CLIP, takes MODEL" in p for p in found), found


def test_the_video_template_needs_two_custom_node_packs(fake: FakeComfyUI) -> None:
    workflow = character_workflow("video", SETTINGS, "aiko-0123abcd.safetensors")
    missing = {p.split("no node type ")[1] for p in problems_against(fake.object_info(), workflow)}
    assert missing == {
        "ADE_StandardUniformContextOptions",
        "ADE_AnimateDiffLoaderGen1",
        "VHS_VideoCombine",
    }
    fake.custom_node_packs |= VIDEO_PACKS
    # Its stock nodes are valid against the capture, its custom ones against the packs' schemas.
    assert problems_against(fake.object_info(), workflow) == []


def test_a_stock_server_refuses_the_video_template_before_queueing(fake: FakeComfyUI) -> None:
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as client:
        backend = ComfyUIVideoBackend(client, "random_sd15.safetensors", filename_prefix="aiko")
        with pytest.raises(ComfyUIMissingNodesError) as refused:
            backend.render(REQUEST, frames=8)
    message = str(refused.value)
    assert "\n" not in message
    nodes = "ADE_AnimateDiffLoaderGen1, ADE_StandardUniformContextOptions, VHS_VideoCombine"
    assert f"does not have the node types {nodes}" in message
    assert "ComfyUI-AnimateDiff-Evolved" in message and "ComfyUI-VideoHelperSuite" in message
    assert fake.prompts == []  # nothing was queued
    # With the packs installed the same backend renders the clip.
    fake.custom_node_packs |= VIDEO_PACKS
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as client:
        backend = ComfyUIVideoBackend(client, "random_sd15.safetensors", filename_prefix="aiko")
        assert backend.render(REQUEST, frames=8).filename.endswith(".mp4")


def test_the_node_types_are_read_once_per_client(fake: FakeComfyUI) -> None:
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as client:
        backend = ComfyUIImageBackend(client, "random_sd15.safetensors", filename_prefix="aiko")
        for seed in (1, 2):
            backend.generate(GenerationRequest("aiko", "", seed, steps=2, width=64, height=64))
    reads = [r for r in fake.requests if r[:2] == ("GET", "/object_info")]
    assert len(reads) == 1 and len(fake.prompts) == 2
