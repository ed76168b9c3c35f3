"""ComfyUI workflow templates (API format) and the edits the pipeline makes to them.

A template is the graph ComfyUI's "Save (API format)" writes: `{node_id: {class_type, inputs}}`
where a link is `[source_node_id, output_index]`. The shipped templates live in `workflows/`:
`image` (checkpoint → LoraLoader → text encode ×2 → empty latent → KSampler → VAE decode → save),
`video` (the same chain through AnimateDiff-Evolved's Gen1 loader into VideoHelperSuite's
Video Combine: custom nodes) and `video_i2v`, stock ComfyUI nodes only: the image chain draws a
keyframe with the character's checkpoint and LoRA, which a stock image-to-video model
(`WanImageToVideo`, its own UNet, text encoder, VAE and CLIP vision) animates into
`CreateVideo` → `SaveVideo`. Nodes are found by class, never by id, so a user's own template
works as well.

Every LoraLoader gets the character's LoRA (seed 001: "all workflows include a LoraLoader
node"); a character without an active LoRA gets the template with its LoraLoaders removed and
their links rewired to what fed them.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lora_pipeline.errors import PipelineError
from lora_pipeline.generation_settings import LIMITS, InvalidSettingError, check_settings

Workflow = dict[str, dict[str, Any]]

TEMPLATES = ("image", "video", "video_i2v")
VIDEO_TEMPLATES = ("video", "video_i2v")
LORA_LOADER = "LoraLoader"
CHECKPOINT_LOADER = "CheckpointLoaderSimple"
SAMPLER = "KSampler"
TEXT_ENCODER = "CLIPTextEncode"
LATENT = "EmptyLatentImage"
ANIMATEDIFF_LOADER = "ADE_AnimateDiffLoaderGen1"
VIDEO_COMBINE = "VHS_VideoCombine"
SAVE_VIDEO = "SaveVideo"
CREATE_VIDEO = "CreateVideo"
OUTPUT_NODES = ("SaveImage", VIDEO_COMBINE, SAVE_VIDEO)
# Stock image-to-video nodes the builder fills: (the step of their width and height, the step
# of their length: Wan's latent holds 1 + 4k frames).
IMAGE_TO_VIDEO = {"WanImageToVideo": (16, 4)}
# Nodes that pass conditioning through: output index → the input it carries on.
CONDITIONING_PASSTHROUGH = {name: {0: "positive", 1: "negative"} for name in IMAGE_TO_VIDEO}
# The model loaders of the image-to-video chain, by the `VideoModels` field they take.
VIDEO_MODEL_INPUTS = {
    "unet": ("UNETLoader", "unet_name"),
    "text_encoder": ("CLIPLoader", "clip_name"),
    "vae": ("VAELoader", "vae_name"),
    "clip_vision": ("CLIPVisionLoader", "clip_name"),
}
# AnimateDiff's SD1.5 motion modules were trained on 16-frame windows at 512 px; more costs VRAM
# and time without making the short review clips better.
VIDEO_MAX_SIZE = 512
VIDEO_MAX_FRAMES = 16
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_FILE_NAME_LIMIT = 255


class WorkflowError(PipelineError, ValueError):
    """A template or setting that cannot make a valid ComfyUI workflow; one readable line."""


@dataclass(frozen=True)
class VideoModels:
    """The image-to-video model's files as ComfyUI lists them; None keeps the template's."""

    unet: str | None = None
    text_encoder: str | None = None
    vae: str | None = None
    clip_vision: str | None = None

    def __post_init__(self) -> None:
        for label in VIDEO_MODEL_INPUTS:
            value = getattr(self, label)
            if value is not None:
                _check_name(value, f"video {label.replace('_', ' ')}")


@dataclass(frozen=True)
class WorkflowSettings:
    """The values a template is filled with (the character's settings in the registry)."""

    checkpoint: str
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    cfg: float = 7.0
    steps: int = 20
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    # The character slug: ComfyUI names outputs `<prefix>_00001_.png`, so a scan of its output
    # folder can tell whose image a file is.
    filename_prefix: str = "lora_pipeline"
    # Video templates only.
    frames: int = VIDEO_MAX_FRAMES
    frame_rate: float = 8.0
    motion_model: str | None = None
    video_models: VideoModels = VideoModels()

    def __post_init__(self) -> None:
        _check_name(self.checkpoint, "checkpoint")
        for label, text in (("prompt", self.prompt), ("negative prompt", self.negative_prompt)):
            if not isinstance(text, str):
                raise WorkflowError(f"the {label} must be text, not {type(text).__name__}")
        if not self.prompt.strip():
            raise WorkflowError("the prompt is empty")
        # The limits of ComfyUI's own node inputs, as every generation path checks them.
        _check_limit(self.seed, "seed")
        check_settings(
            {
                "steps": self.steps,
                "cfg": self.cfg,
                "sampler": self.sampler_name,
                "scheduler": self.scheduler,
                "width": self.width,
                "height": self.height,
                "frames": self.frames,
                "frame_rate": self.frame_rate,
            },
            error=WorkflowError,
        )
        if not isinstance(self.filename_prefix, str) or not _PREFIX.fullmatch(self.filename_prefix):
            raise WorkflowError(
                f"invalid filename prefix {self.filename_prefix!r}: use up to 100 letters, "
                "digits, '_', '-' or '.', starting with a letter or a digit"
            )
        if self.motion_model is not None:
            _check_name(self.motion_model, "motion model")


def _check_limit(value: object, name: str, label: str | None = None) -> None:
    """`value` within the limit of the generation setting `name` (see generation_settings)."""
    try:
        LIMITS[name].check(value, label or name)
    except InvalidSettingError as error:
        raise WorkflowError(str(error)) from None


def _check_name(value: object, label: str) -> None:
    """A model or option name as ComfyUI lists it (ComfyUI itself checks it is in its list)."""
    if not isinstance(value, str) or not value.strip():
        raise WorkflowError(f"the {label} name is empty")
    if len(value) > _FILE_NAME_LIMIT or any(ch in value for ch in "\x00\r\n"):
        raise WorkflowError(f"invalid {label} name {value[:80]!r}")


def load_template(name: str) -> Workflow:
    """A shipped template by name (one of TEMPLATES), as a fresh, validated copy."""
    if name not in TEMPLATES:
        raise WorkflowError(f"unknown workflow template {name!r}; use one of {TEMPLATES}")
    text = resources.files(__package__).joinpath(f"workflows/{name}.json").read_text("utf-8")
    return validate_workflow(json.loads(text))


def _is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def validate_workflow(workflow: object) -> Workflow:
    """Check the API-format shape: nodes with a class and inputs, links to nodes that exist."""
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError("a workflow must be a non-empty JSON object of nodes (API format)")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"node {node_id!r} has no class_type (is this API format?)")
        if not isinstance(node.get("inputs"), dict):
            raise WorkflowError(f"node {node_id} ({node['class_type']}) has no inputs object")
        for name, value in node["inputs"].items():
            if _is_link(value) and (value[0] not in workflow or value[1] < 0):
                raise WorkflowError(
                    f"node {node_id} ({node['class_type']}) input {name!r} links to "
                    f"missing node {value[0]!r}"
                )
    return workflow


def _nodes_of(workflow: Workflow, *class_types: str) -> list[dict[str, Any]]:
    return [node for node in workflow.values() if node["class_type"] in class_types]


def _require(workflow: Workflow, *class_types: str) -> list[dict[str, Any]]:
    nodes = _nodes_of(workflow, *class_types)
    if not nodes:
        raise WorkflowError(f"the workflow has no {' or '.join(class_types)} node")
    return nodes


def is_video_workflow(workflow: Workflow) -> bool:
    return any(
        node["class_type"].startswith("ADE_")
        or node["class_type"] in (*IMAGE_TO_VIDEO, VIDEO_COMBINE, CREATE_VIDEO, SAVE_VIDEO)
        for node in workflow.values()
    )


def video_template_for(node_types: frozenset[str]) -> str:
    """The shipped video template a server with `node_types` can run: AnimateDiff's, whose
    every frame comes from the character's checkpoint and LoRA, when its custom nodes are
    installed, else the stock image-to-video one."""
    needed = {node["class_type"] for node in load_template("video").values()}
    return "video" if needed <= node_types else "video_i2v"


def fit_video_size(width: int, height: int) -> tuple[int, int]:
    """Scale down, keeping the aspect ratio, to fit VIDEO_MAX_SIZE (multiples of 8)."""
    scale = min(1.0, VIDEO_MAX_SIZE / max(width, height))
    return (max(16, int(width * scale) // 8 * 8), max(16, int(height * scale) // 8 * 8))


def _text_node(workflow: Workflow, link: object, sampler_input: str) -> dict[str, Any]:
    """The text encoder a sampler's conditioning comes from, through the nodes that pass
    conditioning on (an image-to-video node's positive and negative outputs)."""
    node = workflow[link[0]] if _is_link(link) else None
    for _ in range(len(workflow)):  # a cycle of pass-through nodes ends the walk
        carried = CONDITIONING_PASSTHROUGH.get(node["class_type"], {}) if node else {}
        source = node["inputs"].get(carried[link[1]]) if link[1] in carried else None
        if not _is_link(source) or source[0] not in workflow:
            break
        link, node = source, workflow[source[0]]
    if node is None or node["class_type"] != TEXT_ENCODER:
        raise WorkflowError(f"the KSampler's {sampler_input} input must come from {TEXT_ENCODER}")
    return node


def _set_prompts(workflow: Workflow, settings: WorkflowSettings) -> None:
    for sampler in _require(workflow, SAMPLER):
        positive = _text_node(workflow, sampler["inputs"].get("positive"), "positive")
        negative = _text_node(workflow, sampler["inputs"].get("negative"), "negative")
        if positive is negative:
            raise WorkflowError("the KSampler's positive and negative prompts are the same node")
        positive["inputs"]["text"] = settings.prompt
        negative["inputs"]["text"] = settings.negative_prompt


def _samples_video_model(workflow: Workflow, sampler: dict[str, Any]) -> bool:
    latent = sampler["inputs"].get("latent_image")
    return _is_link(latent) and workflow[latent[0]]["class_type"] in IMAGE_TO_VIDEO


def _set_sampling(workflow: Workflow, settings: WorkflowSettings) -> None:
    for sampler in _require(workflow, SAMPLER):
        sampler["inputs"].update(seed=settings.seed, steps=settings.steps)
        # The character's cfg, sampler and scheduler are its checkpoint's; an image-to-video
        # model's sampler keeps the template's, which suit that model (Wan: cfg 6, uni_pc).
        if not _samples_video_model(workflow, sampler):
            sampler["inputs"].update(
                cfg=float(settings.cfg),
                sampler_name=settings.sampler_name,
                scheduler=settings.scheduler,
            )


def _set_video(workflow: Workflow, settings: WorkflowSettings, frames: int) -> None:
    to_video = _nodes_of(workflow, *IMAGE_TO_VIDEO)
    if not to_video:
        # AnimateDiff: one latent per frame.
        for latent in _require(workflow, LATENT):
            latent["inputs"]["batch_size"] = frames
    for loader in _nodes_of(workflow, ANIMATEDIFF_LOADER):
        if settings.motion_model is not None:
            loader["inputs"]["model_name"] = settings.motion_model
    for combine in _nodes_of(workflow, VIDEO_COMBINE):
        combine["inputs"]["frame_rate"] = settings.frame_rate
    for create in _nodes_of(workflow, CREATE_VIDEO):
        create["inputs"]["fps"] = float(settings.frame_rate)
    for field_name, (class_type, input_name) in VIDEO_MODEL_INPUTS.items():
        name = getattr(settings.video_models, field_name)
        for loader in _nodes_of(workflow, class_type) if name is not None else ():
            loader["inputs"][input_name] = name


def _set_image_to_video(
    workflow: Workflow, width: int, height: int, frames: int
) -> tuple[int, int]:
    """The image-to-video nodes' size (rounded down to their step) and length (1 + k·step
    frames, at most `frames`); that size, at which the keyframe is drawn too."""
    for node in _nodes_of(workflow, *IMAGE_TO_VIDEO):
        size_step, frame_step = IMAGE_TO_VIDEO[node["class_type"]]
        width = max(size_step, width // size_step * size_step)
        height = max(size_step, height // size_step * size_step)
        node["inputs"].update(
            width=width,
            height=height,
            length=1 + (frames - 1) // frame_step * frame_step,
            batch_size=1,
        )
    return width, height


def build_workflow(template: Workflow, settings: WorkflowSettings) -> Workflow:
    """A copy of `template` filled with `settings`; the template itself is left unchanged.

    A video template (AnimateDiff or image-to-video nodes) is capped at 512×512 (scaled down
    keeping the aspect ratio) and 16 frames.
    """
    workflow = copy.deepcopy(validate_workflow(template))
    for loader in _require(workflow, CHECKPOINT_LOADER):
        loader["inputs"]["ckpt_name"] = settings.checkpoint
    _set_prompts(workflow, settings)
    _set_sampling(workflow, settings)
    width, height = settings.width, settings.height
    if is_video_workflow(workflow):
        frames = min(settings.frames, VIDEO_MAX_FRAMES)
        _set_video(workflow, settings, frames)
        width, height = _set_image_to_video(workflow, *fit_video_size(width, height), frames)
    for latent in _require(workflow, LATENT):
        latent["inputs"].update(width=width, height=height)
    for output in _require(workflow, *OUTPUT_NODES):
        output["inputs"]["filename_prefix"] = settings.filename_prefix
    return workflow


def inject_lora(
    workflow: Workflow,
    lora_name: str,
    strength_model: float = 0.8,
    strength_clip: float = 0.8,
) -> Workflow:
    """A copy with every LoraLoader loading `lora_name` (its name in ComfyUI's loras folder)."""
    _check_name(lora_name, "LoRA")
    _check_limit(strength_model, "lora_strength", "LoRA model strength")
    _check_limit(strength_clip, "lora_strength", "LoRA clip strength")
    result = copy.deepcopy(validate_workflow(workflow))
    loaders = _nodes_of(result, LORA_LOADER)
    if not loaders:
        # Generating without the character's LoRA would look like success and be wrong.
        raise WorkflowError(
            f"the workflow has no LoraLoader node, so the LoRA {lora_name} cannot be applied"
        )
    for loader in loaders:
        loader["inputs"].update(
            lora_name=lora_name,
            strength_model=float(strength_model),
            strength_clip=float(strength_clip),
        )
    return result


def strip_lora(workflow: Workflow) -> Workflow:
    """A copy without LoraLoader nodes; whatever read a loader's MODEL or CLIP output now reads
    the loader's own model or clip input (chains of loaders collapse to their source)."""
    result = copy.deepcopy(validate_workflow(workflow))
    for loader_id in [i for i, node in result.items() if node["class_type"] == LORA_LOADER]:
        inputs = result.pop(loader_id)["inputs"]
        sources = {0: inputs.get("model"), 1: inputs.get("clip")}
        for node_id, node in result.items():
            for name, value in node["inputs"].items():
                if not (_is_link(value) and value[0] == loader_id):
                    continue
                source = sources.get(value[1])
                if not _is_link(source):
                    raise WorkflowError(
                        f"cannot remove LoraLoader {loader_id}: node {node_id} reads its output "
                        f"{value[1]}, which has no linked source"
                    )
                node["inputs"][name] = list(source)
    return result


def stack_lora_loaders(workflow: Workflow, below: Sequence[tuple[str, float]]) -> Workflow:
    """A copy where each LoraLoader reads its model and clip through new LoraLoaders, one per
    (LoRA name, strength) of `below` in order: a shared baseline LoRA goes under the
    character's own, as chained LoraLoaders do in a hand-built ComfyUI graph."""
    result = copy.deepcopy(validate_workflow(workflow))
    if not below:
        return result
    next_id = 1 + max((int(i) for i in result if str(i).isdigit()), default=0)
    for loader in _require(result, LORA_LOADER):
        model, clip = loader["inputs"].get("model"), loader["inputs"].get("clip")
        for name, strength in below:
            _check_name(name, "LoRA")
            _check_limit(strength, "lora_strength", "LoRA strength")
            node_id = str(next_id)
            next_id += 1
            result[node_id] = {
                "class_type": LORA_LOADER,
                "inputs": {
                    "lora_name": name,
                    "strength_model": float(strength),
                    "strength_clip": float(strength),
                    "model": model,
                    "clip": clip,
                },
            }
            model, clip = [node_id, 0], [node_id, 1]
        loader["inputs"].update(model=model, clip=clip)
    return result


def character_workflow(
    kind: str,
    settings: WorkflowSettings,
    lora_name: str | None = None,
    lora_strength: float = 0.8,
    template: Workflow | None = None,
    below: Sequence[tuple[str, float]] = (),
) -> Workflow:
    """The shipped (or given) template of `kind` filled in, with the LoRA when there is one,
    and the LoRAs of `below` (e.g. the checkpoint's baseline LoRA) chained under it."""
    workflow = build_workflow(template if template is not None else load_template(kind), settings)
    if lora_name is None:
        return strip_lora(workflow)
    return stack_lora_loaders(inject_lora(workflow, lora_name, lora_strength, lora_strength), below)
