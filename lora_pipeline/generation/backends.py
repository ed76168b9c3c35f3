"""The generator interface the generated_images stage calls.

Two backends draw images: the in-process diffusers pipeline (`LocalImageBackend`) and ComfyUI
over HTTP and its websocket (`ComfyUIImageBackend`), which fills the image workflow template
with the request and injects the character's LoRA into every LoraLoader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath
from typing import Protocol

from PIL import Image

from lora_pipeline.generation.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUITimeoutError,
    ProgressCallback,
    PromptResult,
)
from lora_pipeline.generation.local import (
    DiffusersGenerator,
    GenerationRequest,
    Loras,
    LoraSpec,
    lora_stack,
)
from lora_pipeline.generation.workflows import (
    VIDEO_MAX_FRAMES,
    VideoModels,
    Workflow,
    WorkflowSettings,
    character_workflow,
    video_template_for,
)
from lora_pipeline.media.images import load_image

log = logging.getLogger(__name__)


class ImageBackend(Protocol):
    name: str
    checkpoint: str  # the base model, by which the LoRA releases trained on it are chosen

    def generate(self, request: GenerationRequest, lora: Loras = None) -> Image.Image:
        """One image for the request with the LoRA or LoRA stack (the last one is the
        character's, those before it go under it); the same request gives the same image."""
        ...


class LocalImageBackend:
    """Generates in this process with diffusers."""

    name = "diffusers"

    def __init__(self, generator: DiffusersGenerator) -> None:
        self._generator = generator
        self.checkpoint = generator.model

    def generate(self, request: GenerationRequest, lora: Loras = None) -> Image.Image:
        return self._generator.generate(request, lora)


def comfyui_lora_name(lora: LoraSpec) -> str:
    """The name ComfyUI's LoraLoader knows a LoRA by.

    Training copies a release into ComfyUI's loras folder under its file name, so an absolute
    path means that file name; a relative path is taken as already relative to the loras
    folder (it may name a subfolder, e.g. `characters/aiko.safetensors`).
    """
    path = PurePath(lora.path)
    return path.name if path.is_absolute() else PurePosixPath(*path.parts).as_posix()


@dataclass(frozen=True)
class RenderedFile:
    filename: str
    data: bytes


class _ComfyUIBackend:
    """What the image and video backends share: settings, LoRA choice, the run and its end."""

    kind = "image"

    def __init__(
        self,
        client: ComfyUIClient,
        checkpoint: str,
        lora: Loras = None,
        *,
        filename_prefix: str = "lora_pipeline",
        template: Workflow | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_queued: Callable[[str], None] | None = None,
        video_models: VideoModels | None = None,
    ) -> None:
        self.client = client
        self.video_models = video_models or VideoModels()
        self.checkpoint = checkpoint
        self.lora = lora
        self.filename_prefix = filename_prefix
        self.template = template
        self.timeout = timeout
        self.on_progress = on_progress
        # Called with the prompt id as soon as ComfyUI queued it (the job row records it, so
        # "clear stuck jobs" can interrupt it).
        self.on_queued = on_queued
        self.last_prompt_id: str | None = None

    def _workflow(
        self,
        request: GenerationRequest,
        lora: Loras,
        frames: int = VIDEO_MAX_FRAMES,
        frame_rate: float = 8.0,
    ) -> Workflow:
        settings = WorkflowSettings(
            checkpoint=self.checkpoint,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            cfg=request.cfg,
            steps=request.steps,
            sampler_name=request.sampler,
            scheduler=request.scheduler,
            width=request.width,
            height=request.height,
            filename_prefix=self.filename_prefix,
            frames=frames,
            frame_rate=frame_rate,
            video_models=self.video_models,
        )
        kind = self._template_name()
        stack = lora_stack(lora if lora is not None else self.lora)
        if not stack:
            return character_workflow(kind, settings, template=self.template)
        *below, top = stack
        return character_workflow(
            kind,
            settings,
            comfyui_lora_name(top),
            top.strength,
            self.template,
            below=[(comfyui_lora_name(spec), spec.strength) for spec in below],
        )

    def _template_name(self) -> str:
        """The shipped template used when the backend was given none."""
        return self.kind

    def _queued(self, prompt_id: str) -> None:
        self.last_prompt_id = prompt_id
        if self.on_queued is not None:
            self.on_queued(prompt_id)

    def _run(self, workflow: Workflow) -> PromptResult:
        try:
            return self.client.run(
                workflow, timeout=self.timeout, on_progress=self.on_progress, on_queued=self._queued
            )
        except ComfyUITimeoutError as timeout:
            # The job is failed on our side; do not leave ComfyUI rendering it for nobody.
            try:
                self.client.cancel(timeout.prompt_id)
            except ComfyUIError as error:
                log.warning("could not cancel timed-out prompt %s: %s", timeout.prompt_id, error)
            raise


class ComfyUIImageBackend(_ComfyUIBackend):
    """Draws with ComfyUI: the image template filled from the request, the LoRA injected.

    `checkpoint` and LoRA names are ComfyUI's (files in its models folders); `filename_prefix`
    is the character slug so that ComfyUI's output files say whose they are.
    """

    name = "comfyui"
    kind = "image"

    def generate(self, request: GenerationRequest, lora: Loras = None) -> Image.Image:
        """The first image the workflow saved; `lora` (else the backend's) at its strength."""
        result = self._run(self._workflow(request, lora))
        output = result.first("images")
        data = self.client.fetch(output)
        return load_image(data, name=f"ComfyUI output {output.filename}")


class ComfyUIVideoBackend(_ComfyUIBackend):
    """Short clips (capped at 512×512 and 16 frames) with the given template, else the shipped
    one the server can run: AnimateDiff's where its custom nodes are installed, else the stock
    image-to-video one (a keyframe with the character's checkpoint and LoRA, animated)."""

    name = "comfyui"
    kind = "video"

    def _template_name(self) -> str:
        if self.template is not None:
            return self.kind
        return video_template_for(self.client.node_types())

    def render(
        self,
        request: GenerationRequest,
        lora: Loras = None,
        frames: int = VIDEO_MAX_FRAMES,
        frame_rate: float = 8.0,
    ) -> RenderedFile:
        workflow = self._workflow(request, lora, frames=frames, frame_rate=frame_rate)
        output = self._run(workflow).first_video()
        return RenderedFile(output.filename, self.client.fetch(output))
