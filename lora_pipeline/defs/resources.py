"""Dagster resources: thin handles on the registry, the data root and the models.

Each resource reads `Settings.from_env()` unless a field overrides it, so `dagster dev`, the CLI
and the tests share one configuration.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from lora_pipeline.config import Settings, torch_device
from lora_pipeline.evaluation import scores
from lora_pipeline.evaluation.service import EvalScorers
from lora_pipeline.generation.backends import (
    ComfyUIImageBackend,
    ComfyUIVideoBackend,
    LocalImageBackend,
)
from lora_pipeline.generation.comfyui import ComfyUIClient
from lora_pipeline.generation.local import SINGLE_FILE_SUFFIXES, DiffusersGenerator
from lora_pipeline.generation.service import Backends
from lora_pipeline.media.store import DataRoot
from lora_pipeline.model_configs import config_folder_for
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.training.gpu import free_comfyui_vram
from lora_pipeline.training.service import KohyaSetup
from lora_pipeline.vision import llava, reference
from lora_pipeline.vision.captioner import Captioner
from lora_pipeline.vision.captioner_factory import build_captioner
from lora_pipeline.vision.face_detector_factory import load_face_detector
from lora_pipeline.vision.faces import FaceDetector
from lora_pipeline.vision.reference import ReferenceIdentifier
from lora_pipeline.vision.tagger import OnnxTagger


def _settings() -> Settings:
    return Settings.from_env()


class RegistryResource(ConfigurableResource):
    """The registry database; `database_url` defaults to the configured one."""

    database_url: str | None = None

    def url(self) -> str:
        return self.database_url or _settings().database_url

    def get(self) -> Registry:
        return _registry_for(self.url())


_REGISTRIES: dict[str, Registry] = {}


def _registry_for(url: str) -> Registry:
    # One engine per process and URL: engines own connection pools.
    if url not in _REGISTRIES:
        migrate(url)
        _REGISTRIES[url] = Registry(url)
    return _REGISTRIES[url]


class DataRootResource(ConfigurableResource):
    """The folder that holds every image, dataset, LoRA and grid; nothing is written outside."""

    path: str | None = None

    def get(self) -> DataRoot:
        return DataRoot(self.path or _settings().data_root)


class ModelsResource(ConfigurableResource):
    """Model locations and the process-wide, lazily loaded model instances."""

    base_model: str | None = None
    device: str | None = None
    comfyui_loras_dir: str | None = None
    # Training: ComfyUI's URL (to free its VRAM first), a kohya sd-scripts checkout (train with
    # kohya when set), its Python, and a CLIP tokenizer folder for single-file checkpoints.
    comfyui_url: str | None = None
    kohya_scripts_dir: str | None = None
    kohya_python: str | None = None
    tokenizer_dir: str | None = None
    # Dataset: the shot splits' face detector (a YOLO-style .onnx, or insightface:<root>[#pack])
    # and its score threshold, the WD14 tagger (.onnx + selected_tags.csv), and the vlm
    # caption strategy's captioner ('package.module:factory'; unset: the identifier's VLM).
    face_detector: str | None = None
    face_threshold: float | None = None
    tagger: str | None = None
    tagger_tags: str | None = None
    captioner: str | None = None

    def base_model_id(self) -> str:
        model = self.base_model or _settings().base_model
        if not model:
            raise ValueError(
                "no base model configured: set LORA_PIPELINE_BASE_MODEL to a diffusers folder, "
                "a .safetensors checkpoint or a hub id (or run `lora-pipeline demo`)"
            )
        return model

    def device_name(self) -> str:
        return torch_device(self.device or _settings().device)

    def loras_dir(self) -> str | None:
        configured = self.comfyui_loras_dir or _settings().comfyui_loras_dir
        return str(configured) if configured else None

    def generator(self) -> DiffusersGenerator:
        return _generator_for(self.base_model_id(), self.device_name())

    def free_gpu(self) -> None:
        """Drop in-process models before training so the trainer gets the VRAM."""
        for generator in list(_GENERATORS.values()):
            generator.close()
        _GENERATORS.clear()
        # The dataset stages' ONNX sessions hold GPU memory too under onnxruntime-gpu.
        _DATASET_MODELS.clear()
        # The vlm captions' LLaVA (shared with identification), the reference embedder and the
        # eval's CLIP are cached in their modules.
        llava.release_models()
        reference.release_models()
        scores.release_models()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def free_comfyui_vram(self) -> str:
        """POST /free to the configured ComfyUI; what happened, as a sentence for the log."""
        url = self.comfyui_url or _settings().comfyui_url
        if not url:
            return "no ComfyUI configured: nothing to free"
        return free_comfyui_vram(url)

    def kohya_setup(self) -> KohyaSetup | None:
        """The kohya sd-scripts checkout to train with, or None for the built-in trainer."""
        settings = _settings()
        scripts = self.kohya_scripts_dir or settings.kohya_scripts_dir
        if not scripts:
            return None
        python = self.kohya_python or settings.kohya_python or _venv_python(Path(scripts))
        return KohyaSetup(Path(scripts), python, self._tokenizer_dir())

    def single_file_config(self) -> str | None:
        """A diffusers config folder for a single-file base checkpoint (shipped configs plus the
        configured tokenizer), so that it loads offline; None for a folder or hub id."""
        model = self.base_model_id()
        if not model.lower().endswith(SINGLE_FILE_SUFFIXES):
            return None
        tokenizer = self._tokenizer_dir()
        if tokenizer is None:
            return None
        folder = config_folder_for(Path(model), tokenizer, _settings().home / "model_configs")
        return str(folder)

    def _tokenizer_dir(self) -> Path | None:
        configured = self.tokenizer_dir or _settings().tokenizer_dir
        return Path(configured) if configured else None

    def configured_base_model(self) -> str | None:
        """The base model if one is configured (the dataset files name it; None is fine)."""
        return self.base_model or _settings().base_model

    def face_detector_model(self) -> FaceDetector | None:
        """The configured face detector, loaded once per process; None when none is set."""
        settings = _settings()
        spec = self.face_detector or settings.face_detector
        if not spec:
            return None
        threshold = (
            self.face_threshold if self.face_threshold is not None else settings.face_threshold
        )
        device = self.device or settings.device
        return _cached(
            ("faces", spec, threshold, device),
            lambda: load_face_detector(spec, score_threshold=threshold, device=device),
        )

    def tagger_model(self) -> OnnxTagger | None:
        """The configured WD14 tagger, loaded once per process; None when none is set."""
        settings = _settings()
        model = self.tagger or settings.tagger
        if not model:
            return None
        tags = self.tagger_tags or settings.tagger_tags
        device = self.device or settings.device
        return _cached(
            ("tagger", model, tags, device), lambda: OnnxTagger(model, tags, device=device)
        )

    def captioner_model(self, project: str | None = None) -> Captioner | None:
        """The vlm captioner, made once per process: LORA_PIPELINE_CAPTIONER, else the LLaVA
        or Ollama model that identifies the project's frames; None when there is none."""
        settings = _settings()
        spec = self.captioner or settings.captioner
        identifiers = (settings.identifier_for(project) if project else None, settings.identifier)
        device = self.device or settings.device
        return _cached(
            ("captioner", spec, identifiers, device),
            lambda: build_captioner(spec, identifiers, device=device),
        )

    # --- generation and evaluation backends ---

    def comfyui_client(self) -> ComfyUIClient | None:
        """One ComfyUI client per process and URL; None when no ComfyUI is configured."""
        settings = _settings()
        url = self.comfyui_url or settings.comfyui_url
        if not url:
            return None
        key = (url, settings.comfyui_timeout)
        # Kept apart from the models free_gpu drops: a client holds connections, not VRAM.
        if key not in _COMFYUI_CLIENTS:
            _COMFYUI_CLIENTS[key] = ComfyUIClient(url, timeout=settings.comfyui_timeout)
        return _COMFYUI_CLIENTS[key]

    def comfyui_checkpoint(self) -> str:
        """The checkpoint as ComfyUI lists it: configured, else the base model's file name."""
        configured = _settings().comfyui_checkpoint
        return configured or Path(self.base_model_id()).name

    def backends(self, slug: str) -> Backends:
        """ComfyUI (images and AnimateDiff clips) when its URL is set, else in-process diffusers."""
        client = self.comfyui_client()
        if client is None:
            generator = self.generator()
            return Backends(LocalImageBackend(generator), checkpoint=generator.model)
        checkpoint = self.comfyui_checkpoint()
        timeout = _settings().comfyui_timeout
        return Backends(
            image=ComfyUIImageBackend(client, checkpoint, filename_prefix=slug, timeout=timeout),
            checkpoint=checkpoint,
            video=ComfyUIVideoBackend(client, checkpoint, filename_prefix=slug, timeout=timeout),
        )

    def eval_scorers(self) -> EvalScorers:
        """The models behind the identity and CLIP scores, when configured."""
        settings = _settings()
        device = self.device_name()
        identity = settings.identity_model_id()
        embedder = None
        if identity:
            embedder = _cached(
                ("identity", identity, device),
                lambda: ReferenceIdentifier(identity, lambda _slug: [], device=device),
            )
        return EvalScorers(embedder=embedder, clip_model=settings.clip_model, device=device)


def _venv_python(scripts: Path) -> str | None:
    for venv in ("venv", ".venv"):
        python = scripts / venv / "bin" / "python"
        if python.is_file():
            return str(python)
    return None


_DATASET_MODELS: dict[tuple, Any] = {}
_COMFYUI_CLIENTS: dict[tuple[str, float], ComfyUIClient] = {}


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    # Models hold onnxruntime sessions: load each configuration once per process.
    if key not in _DATASET_MODELS:
        _DATASET_MODELS[key] = load()
    return _DATASET_MODELS[key]


_GENERATORS: dict[tuple[str, str], DiffusersGenerator] = {}


def _generator_for(model: str, device: str) -> DiffusersGenerator:
    key = (model, device)
    if key not in _GENERATORS:
        _GENERATORS[key] = DiffusersGenerator(model, device=device)
    return _GENERATORS[key]
