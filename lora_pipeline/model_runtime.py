"""The model runtime: every model a stage uses, loaded once per process, on the right device,
and released in one call when the GPU is needed for something else.

The Dagster resources, the CLI and the trainer ask a `ModelRuntime` built from the settings for
what they need (the base model's generator, the face detector, the tagger, the captioner, the
ComfyUI client, the eval's scorers, the kohya setup). Loading takes seconds to minutes and
gigabytes, so the loaded objects live in this module's cache, keyed by what configures them,
and are shared by every runtime of the process. `release_gpu_models()` drops all of them (and
the VLM, reference-embedder and CLIP caches of their own modules) before a training.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lora_pipeline.config import Settings, torch_device
from lora_pipeline.errors import PipelineError
from lora_pipeline.evaluation import scores
from lora_pipeline.evaluation.service import EvalScorers
from lora_pipeline.generation.backends import (
    ComfyUIImageBackend,
    ComfyUIVideoBackend,
    LocalImageBackend,
)
from lora_pipeline.generation.comfyui import ComfyUIClient, ComfyUIError
from lora_pipeline.generation.local import SINGLE_FILE_SUFFIXES, DiffusersGenerator
from lora_pipeline.generation.profiles import CharacterProfile, character_profile
from lora_pipeline.generation.service import Backends
from lora_pipeline.generation.workflows import VideoModels
from lora_pipeline.gpu_lock import GpuLock
from lora_pipeline.model_configs import config_folder_for
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.training.service import KohyaSetup
from lora_pipeline.vision import llava, reference
from lora_pipeline.vision.captioner import Captioner
from lora_pipeline.vision.captioner_factory import build_captioner
from lora_pipeline.vision.ccip import SPEC_PREFIX as CCIP_PREFIX
from lora_pipeline.vision.ccip import CcipEmbedder, load_ccip
from lora_pipeline.vision.face_detector_factory import load_face_detector, load_yolo_detector
from lora_pipeline.vision.faces import FaceDetector
from lora_pipeline.vision.reference import ReferenceIdentifier
from lora_pipeline.vision.tagger import OnnxTagger

Loaded = TypeVar("Loaded")

# How long training waits for ComfyUI to acknowledge POST /free.
FREE_TIMEOUT_S = 10.0


class ModelConfigurationError(PipelineError, ValueError):
    """A stage needs a model that the settings do not name."""


class ModelRuntime:
    """The models of one configuration; cheap to make, the loaded models are shared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Set by `for_character`: the character's profile, and the settings before it was
        # applied (so that a runtime made for one character can be made for another).
        self.profile: CharacterProfile | None = None
        self._studio_settings = settings

    def for_character(self, slug: str, registry: Registry | None = None) -> ModelRuntime:
        """This runtime as the character uses it: the checkpoint of its project's default
        generation profile (the configured base model when the profile names none) and the
        profile's workflow templates. Every stage of a character runs on it; `registry`
        defaults to the configured one."""
        store = registry or Registry.from_settings(self._studio_settings)
        try:
            with store.session(readonly=True) as session:
                profile = character_profile(session, commands.get_character(session, slug))
        finally:
            if registry is None:
                store.dispose()
        studio = settings = self._studio_settings
        if profile.checkpoint:
            # The global ComfyUI name belongs to the global base model, not to this one.
            settings = studio.with_overrides(
                base_model=profile.checkpoint, comfyui_checkpoint=profile.comfyui_checkpoint
            )
        runtime = ModelRuntime(settings)
        runtime.profile, runtime._studio_settings = profile, studio
        return runtime

    # --- names and places ---

    def base_model_id(self) -> str:
        if not self.settings.base_model:
            raise ModelConfigurationError(
                "no base model configured: set LORA_PIPELINE_BASE_MODEL to a diffusers folder, "
                "a .safetensors checkpoint or a hub id, or give the project one (`lora-pipeline "
                "project set SLUG --checkpoint …`), or run `lora-pipeline demo`"
            )
        return self.settings.base_model

    def device_name(self) -> str:
        return torch_device(self.settings.device)

    def loras_dir(self) -> str | None:
        configured = self.settings.comfyui_loras_dir
        return str(configured) if configured else None

    def single_file_config(self) -> str | None:
        """A diffusers config folder for a single-file base checkpoint (shipped configs plus the
        configured tokenizer), so that it loads offline; None for a folder or hub id."""
        model = self.base_model_id()
        tokenizer = self.settings.tokenizer_dir
        if not model.lower().endswith(SINGLE_FILE_SUFFIXES) or tokenizer is None:
            return None
        return str(config_folder_for(Path(model), tokenizer, self.settings.home / "model_configs"))

    def kohya_setup(self) -> KohyaSetup | None:
        """The kohya sd-scripts checkout to train with, or None for the built-in trainer."""
        scripts = self.settings.kohya_scripts_dir
        if not scripts:
            return None
        python = self.settings.kohya_python or _venv_python(scripts)
        return KohyaSetup(scripts, python, self.settings.tokenizer_dir)

    # --- loaded models ---

    def generator(self) -> DiffusersGenerator:
        # The config folder lets a single-file checkpoint load offline, as the trainer's does.
        model, device, config = self.base_model_id(), self.device_name(), self.single_file_config()
        return _loaded(
            ("generator", model, device, config),
            lambda: DiffusersGenerator(model, device, config=config),
        )

    def face_detector(self) -> FaceDetector | None:
        """The configured face detector; None when none is set."""
        spec, threshold = self.settings.face_detector, self.settings.face_threshold
        if not spec:
            return None
        device = self.settings.device
        return _loaded(
            ("faces", spec, threshold, device),
            lambda: load_face_detector(spec, score_threshold=threshold, device=device),
        )

    def person_detector(self) -> FaceDetector | None:
        """The configured anime person detector (crops per character at ingest); None unset."""
        settings = self.settings
        return self._yolo("person detector", settings.person_detector, settings.person_threshold)

    def head_detector(self) -> FaceDetector | None:
        """The configured anime head detector (three-stage crops); None when unset."""
        settings = self.settings
        return self._yolo("head detector", settings.head_detector, settings.head_threshold)

    def _yolo(self, what: str, path: str | None, threshold: float) -> FaceDetector | None:
        if not path:
            return None
        device = self.settings.device
        return _loaded(
            (what, path, threshold, device),
            lambda: load_yolo_detector(path, what, score_threshold=threshold, device=device),
        )

    def tagger(self) -> OnnxTagger | None:
        """The configured WD14 tagger; None when none is set."""
        model, tags = self.settings.tagger, self.settings.tagger_tags
        if not model:
            return None
        device = self.settings.device
        return _loaded(
            ("tagger", model, tags, device), lambda: OnnxTagger(model, tags, device=device)
        )

    def captioner(self, project: str | None = None) -> Captioner | None:
        """The vlm captioner: LORA_PIPELINE_CAPTIONER, else the LLaVA or Ollama model that
        identifies the project's frames; None when there is none."""
        settings = self.settings
        spec, device = settings.captioner, settings.device
        identifiers = (settings.identifier_for(project) if project else None, settings.identifier)
        return _loaded(
            ("captioner", spec, identifiers, device),
            lambda: build_captioner(spec, identifiers, device=device),
        )

    def eval_scorers(self) -> EvalScorers:
        """The models behind the identity and CLIP scores, when configured."""
        device = self.device_name()
        return EvalScorers(
            embedder=self.identity_embedder(), clip_model=self.settings.clip_model, device=device
        )

    def identity_embedder(self) -> CcipEmbedder | ReferenceIdentifier | None:
        """The model that says who a picture shows (CCIP-style or CLIP): the eval's identity
        score and the clustering of unrecognised crops; None when none is configured."""
        device, identity = self.device_name(), self.settings.identity_model_id()
        if not identity:
            return None
        if identity.startswith(CCIP_PREFIX):
            return _loaded(("identity", identity, device), lambda: load_ccip(identity, device))
        return _loaded(
            ("identity", identity, device),
            lambda: ReferenceIdentifier(identity, lambda _slug: [], device=device),
        )

    # --- ComfyUI ---

    def comfyui_client(self) -> ComfyUIClient | None:
        """One ComfyUI client per process and URL; None when no ComfyUI is configured."""
        url, timeout = self.settings.comfyui_url, self.settings.comfyui_timeout
        if not url:
            return None
        key = (url, timeout)
        # Kept apart from the models release_gpu_models drops: a client holds connections.
        with _LOCK:
            if key not in _COMFYUI_CLIENTS:
                _COMFYUI_CLIENTS[key] = ComfyUIClient(url, timeout=timeout)
            return _COMFYUI_CLIENTS[key]

    def comfyui_checkpoint(self) -> str:
        """The checkpoint as ComfyUI lists it: configured, else the base model's file name."""
        return self.settings.comfyui_checkpoint or Path(self.base_model_id()).name

    def backends(self, slug: str, registry: Registry | None = None) -> Backends:
        """What draws the character's images, with its generation profile (`for_character`):
        ComfyUI when its URL is set (images and clips, the profile's templates, else the shipped
        ones: for clips the one the server can run, AnimateDiff or stock image-to-video), else
        in-process diffusers."""
        runtime = self.for_character(slug, registry)
        profile = runtime.profile or CharacterProfile(slug)
        client = runtime.comfyui_client()
        if client is None:
            generator = runtime.generator()
            return Backends(LocalImageBackend(generator), checkpoint=generator.model)
        checkpoint, timeout = runtime.comfyui_checkpoint(), runtime.settings.comfyui_timeout
        return Backends(
            image=ComfyUIImageBackend(
                client, checkpoint, filename_prefix=slug, template=profile.workflow, timeout=timeout
            ),
            checkpoint=checkpoint,
            video=ComfyUIVideoBackend(
                client,
                checkpoint,
                filename_prefix=slug,
                template=profile.video_workflow,
                timeout=timeout,
                video_models=VideoModels(
                    unet=runtime.settings.comfyui_video_model,
                    text_encoder=runtime.settings.comfyui_video_text_encoder,
                    vae=runtime.settings.comfyui_video_vae,
                    clip_vision=runtime.settings.comfyui_video_clip_vision,
                ),
            ),
        )

    # --- the GPU ---

    def gpu_lock(self) -> GpuLock:
        """The lock of the device this process computes on (one GPU job at a time)."""
        return GpuLock(self.settings.gpu_lock_dir, self.device_name())

    def free_comfyui_vram(self) -> str:
        """Ask the configured ComfyUI to unload its models; a sentence saying what happened.

        An unreachable or failing ComfyUI is reported, not raised: a ComfyUI that is down holds
        no VRAM, and training must not wait on it."""
        url = self.settings.comfyui_url
        if not url:
            return "no ComfyUI configured: nothing to free"
        try:
            with ComfyUIClient(url, http_timeout=FREE_TIMEOUT_S) as client:
                client.free()
        except (ComfyUIError, ValueError) as error:
            return f"could not ask ComfyUI to free its VRAM ({error}); training anyway"
        return f"asked ComfyUI at {url} to unload its models and free its VRAM"

    def release_gpu(self) -> str:
        """Everything this process holds on the GPU released, then ComfyUI's VRAM: before a
        training; a sentence for the log."""
        release_gpu_models()
        return self.free_comfyui_vram()


_LOADED: dict[tuple, Any] = {}
_COMFYUI_CLIENTS: dict[tuple[str, float], ComfyUIClient] = {}
_LOCK = threading.RLock()


def _loaded(key: tuple, load: Callable[[], Loaded]) -> Loaded:
    # One load per configuration and process: models hold sessions, weights and VRAM.
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]


def release_gpu_models() -> None:
    """Drop every model loaded in this process so its memory (VRAM) can go to training."""
    with _LOCK:
        for model in _LOADED.values():
            close = getattr(model, "close", None)
            if callable(close):
                close()
        _LOADED.clear()
    # The VLM (shared by identification and captions), the reference embedder and the eval's
    # CLIP are cached in their own modules.
    llava.release_models()
    reference.release_models()
    scores.release_models()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _venv_python(scripts: Path) -> str | None:
    for venv in ("venv", ".venv"):
        python = scripts / venv / "bin" / "python"
        if python.is_file():
            return str(python)
    return None
