"""Workflows run only where their nodes exist: the shipped templates checked against the
`/object_info` captured from a stock ComfyUI v0.8.0 (node types, input names, link types and
choices), a server without the AnimateDiff template's custom nodes refusing it before anything
is queued, in one line naming the nodes and the packs that provide them, and the stock
image-to-video template chosen where those packs are missing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lora_pipeline.generation.backends import ComfyUIImageBackend, ComfyUIVideoBackend
from lora_pipeline.generation.comfyui import ComfyUIClient, ComfyUIMissingNodesError
from lora_pipeline.generation.local import GenerationRequest, LoraSpec
from lora_pipeline.generation.workflows import (
    VideoModels,
    WorkflowSettings,
    character_workflow,
    load_template,
    video_template_for,
)
from lora_pipeline_tests.generation.fake_comfyui import (
    FakeComfyUI,
    stock_node_types,
    stock_object_info,
)

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
    animatediff = load_template("video")
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as client:
        backend = ComfyUIVideoBackend(
            client, "random_sd15.safetensors", filename_prefix="aiko", template=animatediff
        )
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


def _by_class(workflow: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [n["inputs"] for n in workflow.values() if n["class_type"] == class_type]


def test_the_stock_video_template_is_valid_on_stock_comfyui(fake: FakeComfyUI) -> None:
    info = fake.object_info()
    for lora in (None, "aiko-0123abcd.safetensors"):
        workflow = character_workflow("video_i2v", SETTINGS, lora)
        assert {n["class_type"] for n in workflow.values()} <= stock_node_types()
        assert problems_against(info, workflow) == [], lora
    # The check sees the stock chain's own links: the image-to-video latent, not its
    # conditioning, must feed the video sampler.
    broken = character_workflow("video_i2v", SETTINGS, "aiko-0123abcd.safetensors")
    video_sampler = next(
        n for n in broken.values()
        if n["class_type"] == "KSampler" and n["inputs"]["latent_image"][1] == 2
    )
    video_sampler["inputs"]["latent_image"][1] = 0
    assert any("latent_image: gets CONDITIONING, takes LATENT" in p
               for p in problems_against(info, broken))


def test_the_stock_video_template_keeps_the_characters_keyframe() -> None:
    settings = WorkflowSettings(
        **{**SETTINGS.__dict__, "width": 200, "height": 104, "frames": 16, "cfg": 5.5,
           "sampler_name": "dpmpp_2m", "scheduler": "karras",
           "video_models": VideoModels(unet="wan-tiny.safetensors", vae="wan-vae.safetensors")}
    )
    workflow = character_workflow("video_i2v", settings, "aiko-0123abcd.safetensors", 0.7)
    (to_video,) = _by_class(workflow, "WanImageToVideo")
    # Wan takes sizes in steps of 16 and 1 + 4k frames; the keyframe is drawn at that size.
    assert (to_video["width"], to_video["height"], to_video["length"]) == (192, 96, 13)
    (latent,) = _by_class(workflow, "EmptyLatentImage")
    assert (latent["width"], latent["height"], latent["batch_size"]) == (192, 96, 1)
    # The start image is the keyframe the character's checkpoint and LoRA drew.
    keyframe = workflow[to_video["start_image"][0]]
    assert keyframe["class_type"] == "VAEDecode" and keyframe["inputs"]["vae"] == ["1", 2]
    (lora,) = _by_class(workflow, "LoraLoader")
    assert lora["lora_name"] == "aiko-0123abcd.safetensors" and lora["strength_model"] == 0.7
    keyframe_sampler, video_sampler = sorted(
        _by_class(workflow, "KSampler"), key=lambda n: n["latent_image"][0] != "5"
    )
    assert keyframe_sampler["model"] == ["2", 0]
    assert (keyframe_sampler["cfg"], keyframe_sampler["sampler_name"]) == (5.5, "dpmpp_2m")
    # The video model samples with its own cfg and sampler, the request's seed and steps.
    assert (video_sampler["cfg"], video_sampler["sampler_name"]) == (6.0, "uni_pc")
    assert (video_sampler["seed"], video_sampler["steps"]) == (5, 2)
    # Both text encoders get the prompts; the settings' model files replace the template's.
    texts = sorted(n["text"] for n in _by_class(workflow, "CLIPTextEncode"))
    assert texts == ["aiko, teal hair"] * 2 + ["lowres"] * 2
    assert _by_class(workflow, "UNETLoader")[0]["unet_name"] == "wan-tiny.safetensors"
    assert _by_class(workflow, "VAELoader")[0]["vae_name"] == "wan-vae.safetensors"
    assert _by_class(workflow, "CLIPLoader")[0]["clip_name"] == (
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    )
    assert _by_class(workflow, "CreateVideo")[0]["fps"] == 8.0
    assert _by_class(workflow, "SaveVideo")[0]["filename_prefix"] == "aiko"


def test_the_default_video_template_is_the_one_the_server_can_run(fake: FakeComfyUI) -> None:
    assert video_template_for(frozenset(stock_node_types())) == "video_i2v"
    assert video_template_for(frozenset(fake.node_types())) == "video_i2v"
    fake.custom_node_packs |= VIDEO_PACKS
    assert video_template_for(frozenset(fake.node_types())) == "video"
    fake.custom_node_packs.clear()
    clips = {}
    for strength in (0.8, 0.4):
        lora = LoraSpec("aiko-0123abcd.safetensors", strength=strength)
        with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as client:
            backend = ComfyUIVideoBackend(
                client, "random_sd15.safetensors", lora, filename_prefix="aiko"
            )
            clips[strength] = backend.render(REQUEST, frames=9)
    prompt = fake.prompts[-1]["prompt"]
    assert {n["class_type"] for n in prompt.values()} <= stock_node_types()
    assert _by_class(prompt, "WanImageToVideo")[0]["length"] == 9
    assert clips[0.8].filename == "aiko_00001_.mp4" and clips[0.8].data[4:8] == b"ftyp"
    # The clip follows the keyframe, which follows the character's LoRA.
    assert clips[0.8].data != clips[0.4].data
