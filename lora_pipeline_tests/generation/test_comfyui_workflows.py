"""Workflow templates: filling, LoRA injection into every LoraLoader, removal with rewiring."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lora_pipeline.generation.workflows import (
    VIDEO_MAX_FRAMES,
    Workflow,
    WorkflowError,
    WorkflowSettings,
    build_workflow,
    character_workflow,
    inject_lora,
    load_template,
    strip_lora,
    validate_workflow,
)
from lora_pipeline_tests.generation.fake_comfyui import sample

SETTINGS = WorkflowSettings(
    checkpoint="anime_v3.safetensors",
    prompt="aiko_char, teal hair",
    negative_prompt="blurry",
    seed=1234,
    cfg=6.5,
    steps=28,
    sampler_name="dpmpp_2m",
    scheduler="karras",
    width=512,
    height=768,
    filename_prefix="aiko",
)


def by_class(workflow: Workflow, class_type: str) -> list[dict[str, Any]]:
    return [node for node in workflow.values() if node["class_type"] == class_type]


def without_meta(workflow: Workflow) -> Workflow:
    return {i: {k: v for k, v in n.items() if k != "_meta"} for i, n in workflow.items()}


def test_the_image_template_makes_the_request_real_comfyui_accepted() -> None:
    """Filled like run 3 of the capture, it is that request, node for node."""
    captured = sample("run3_lora_prompt_request.json")["prompt"]
    settings = WorkflowSettings(
        checkpoint="random_sd15.safetensors",
        prompt="a photo of a cat",
        negative_prompt="blurry",
        seed=43,
        cfg=7.0,
        steps=2,
        width=64,
        height=64,
        filename_prefix="run3_lora",
    )
    workflow = character_workflow("image", settings, "random_kohya_r4.safetensors", 1.0)
    assert without_meta(workflow) == captured


def test_build_fills_every_setting_and_leaves_the_template_alone() -> None:
    template = load_template("image")
    pristine = copy.deepcopy(template)
    workflow = build_workflow(template, SETTINGS)
    assert template == pristine
    sampler = by_class(workflow, "KSampler")[0]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (1234, 28, 6.5)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("dpmpp_2m", "karras")
    # The prompts go where the sampler reads them, whatever the node ids.
    assert workflow[sampler["positive"][0]]["inputs"]["text"] == "aiko_char, teal hair"
    assert workflow[sampler["negative"][0]]["inputs"]["text"] == "blurry"
    latent = by_class(workflow, "EmptyLatentImage")[0]["inputs"]
    assert (latent["width"], latent["height"], latent["batch_size"]) == (512, 768, 1)
    assert by_class(workflow, "CheckpointLoaderSimple")[0]["inputs"]["ckpt_name"] == (
        "anime_v3.safetensors"
    )
    assert by_class(workflow, "SaveImage")[0]["inputs"]["filename_prefix"] == "aiko"


def chained_loras() -> Workflow:
    """The image template with a second LoraLoader after the first (a style LoRA, say)."""
    workflow = load_template("image")
    workflow["20"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["2", 0],
            "clip": ["2", 1],
            "lora_name": "style.safetensors",
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    }
    for node_id in ("3", "4"):
        workflow[node_id]["inputs"]["clip"] = ["20", 1]
    workflow["6"]["inputs"]["model"] = ["20", 0]
    return workflow


def test_inject_lora_sets_every_lora_loader() -> None:
    workflow = inject_lora(chained_loras(), "aiko-0123.safetensors", 0.7, 0.6)
    loaders = by_class(workflow, "LoraLoader")
    assert len(loaders) == 2
    for loader in loaders:
        assert loader["inputs"]["lora_name"] == "aiko-0123.safetensors"
        assert (loader["inputs"]["strength_model"], loader["inputs"]["strength_clip"]) == (0.7, 0.6)
    assert workflow["20"]["inputs"]["model"] == ["2", 0]  # the links are untouched


def test_inject_lora_refuses_a_workflow_without_lora_loader() -> None:
    bare = strip_lora(load_template("image"))
    with pytest.raises(WorkflowError, match="no LoraLoader node, so the LoRA aiko.safetensors"):
        inject_lora(bare, "aiko.safetensors")


def test_strip_lora_rewires_to_the_checkpoint() -> None:
    for template in (load_template("image"), chained_loras()):
        workflow = strip_lora(template)
        assert not by_class(workflow, "LoraLoader")
        validate_workflow(workflow)  # no link left dangling
        assert workflow["3"]["inputs"]["clip"] == ["1", 1]
        assert workflow["4"]["inputs"]["clip"] == ["1", 1]
        assert workflow["6"]["inputs"]["model"] == ["1", 0]
        assert workflow["7"]["inputs"]["vae"] == ["1", 2]


def test_character_without_lora_gets_no_lora_loader() -> None:
    workflow = character_workflow("image", SETTINGS)
    assert not by_class(workflow, "LoraLoader")
    assert by_class(workflow, "KSampler")[0]["inputs"]["model"] == ["1", 0]


def test_video_template_is_capped_at_512_and_16_frames() -> None:
    settings = WorkflowSettings(
        checkpoint="anime_v3.safetensors",
        prompt="aiko waving",
        width=768,
        height=1024,
        frames=48,
        frame_rate=12,
        motion_model="mm_sd_v15_v3.ckpt",
        filename_prefix="aiko",
    )
    workflow = character_workflow("video", settings, "aiko.safetensors", 0.8)
    latent = by_class(workflow, "EmptyLatentImage")[0]["inputs"]
    assert (latent["width"], latent["height"], latent["batch_size"]) == (384, 512, VIDEO_MAX_FRAMES)
    animatediff = by_class(workflow, "ADE_AnimateDiffLoaderGen1")[0]["inputs"]
    assert animatediff["model_name"] == "mm_sd_v15_v3.ckpt"
    assert animatediff["model"] == ["2", 0]  # motion module on top of the character LoRA
    combine = by_class(workflow, "VHS_VideoCombine")[0]["inputs"]
    assert (combine["frame_rate"], combine["filename_prefix"]) == (12, "aiko")
    assert by_class(workflow, "LoraLoader")[0]["inputs"]["lora_name"] == "aiko.safetensors"
    small = WorkflowSettings(**{**settings.__dict__, "width": 256, "height": 320, "frames": 8})
    latent = by_class(character_workflow("video", small), "EmptyLatentImage")[0]["inputs"]
    assert (latent["width"], latent["height"], latent["batch_size"]) == (256, 320, 8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 500}, "width must be a multiple of 8, got 500"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"steps": 0}, "steps must be between 1 and 10000, got 0"),
        ({"cfg": float("nan")}, "cfg must be a number"),
        ({"prompt": "  "}, "the prompt is empty"),
        ({"checkpoint": ""}, "the checkpoint name is empty"),
        ({"filename_prefix": "../../etc/aiko"}, "invalid filename prefix '../../etc/aiko'"),
        ({"filename_prefix": "a/b"}, "invalid filename prefix"),
    ],
)
def test_bad_settings_are_refused_with_one_clear_line(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(").replace(".", r"\.")):
        WorkflowSettings(**{**SETTINGS.__dict__, **change})


def test_a_workflow_that_is_not_api_format_is_refused() -> None:
    with pytest.raises(WorkflowError, match="non-empty JSON object"):
        validate_workflow([])
    with pytest.raises(WorkflowError, match="node '1' has no class_type"):
        validate_workflow({"1": {"inputs": {}}})
    dangling = load_template("image")
    dangling["7"]["inputs"]["samples"] = ["99", 0]
    with pytest.raises(WorkflowError, match="node 7 \\(VAEDecode\\) input 'samples' links to"):
        build_workflow(dangling, SETTINGS)
    no_sampler = {k: v for k, v in load_template("image").items() if k != "6"}
    no_sampler["7"]["inputs"]["samples"] = ["5", 0]
    with pytest.raises(WorkflowError, match="no KSampler node"):
        build_workflow(no_sampler, SETTINGS)
    with pytest.raises(WorkflowError, match="unknown workflow template 'gif'"):
        load_template("gif")


def test_stack_lora_loaders_chains_the_baseline_under_the_character_lora() -> None:
    workflow = character_workflow(
        "image", SETTINGS, "aiko.safetensors", 0.8, below=[("style.safetensors", 0.5)]
    )
    loaders = {i: n for i, n in workflow.items() if n["class_type"] == "LoraLoader"}
    (character_id,) = [
        i for i, n in loaders.items() if n["inputs"]["lora_name"] == "aiko.safetensors"
    ]
    (baseline_id,) = [i for i in loaders if i != character_id]
    baseline = loaders[baseline_id]["inputs"]
    assert loaders[character_id]["inputs"]["model"] == [baseline_id, 0]
    assert loaders[character_id]["inputs"]["clip"] == [baseline_id, 1]
    assert baseline["lora_name"] == "style.safetensors" and baseline["strength_clip"] == 0.5
    assert workflow[baseline["model"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert validate_workflow(workflow) == workflow
    with pytest.raises(WorkflowError):
        character_workflow("image", SETTINGS, "aiko.safetensors", below=[("x.safetensors", 101)])
