"""Generate images in this process with diffusers (no ComfyUI needed).

`DiffusersGenerator` loads a Stable Diffusion pipeline once, on first use, and renders one image
per `GenerationRequest`, optionally with a kohya-format LoRA at a given strength. The same request
gives the same pixels, which is what makes eval grids comparable across LoRA strengths.
"""

from __future__ import annotations

import gc
import hashlib
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lora_pipeline.config import torch_device
from lora_pipeline.errors import PipelineError
from lora_pipeline.generation.samplers import scheduler_for
from lora_pipeline.generation.single_file import (
    CLIP_PREFIXES,
    SINGLE_FILE_SUFFIXES,
    CheckpointError,
    checkpoint_layout,
    clip_text_encoder,
)
from lora_pipeline.generation_settings import check_settings

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
# How many LoRAs stay loaded (disabled) between calls, so an eval grid loads its LoRA once.
MAX_CACHED_LORAS = 4


# The fields of a request that are generation settings (see lora_pipeline.generation_settings).
REQUEST_SETTINGS = ("seed", "steps", "cfg", "sampler", "scheduler", "width", "height")


class GenerationError(PipelineError, RuntimeError):
    """A model, LoRA or request that cannot be used to generate an image."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512

    def __post_init__(self) -> None:
        # The limits every generation path shares; a request always has its own seed.
        if self.seed is None:
            raise GenerationError("a generation request needs a seed")
        values = {name: getattr(self, name) for name in REQUEST_SETTINGS}
        check_settings(values, error=GenerationError)


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    strength: float = 1.0


# One LoRA, or a stack applied together (a shared baseline LoRA under the character's own).
Loras = LoraSpec | Sequence[LoraSpec] | None


def lora_stack(loras: Loras) -> tuple[LoraSpec, ...]:
    """The LoRAs that change the image: a single spec as a stack of one, zero strengths out."""
    if loras is None:
        return ()
    stack = (loras,) if isinstance(loras, LoraSpec) else tuple(loras)
    return tuple(spec for spec in stack if spec.strength != 0)


class SourceKind(Enum):
    FOLDER = "diffusers folder"
    SINGLE_FILE = "single-file checkpoint"
    HUB = "hub id"


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str


def resolve_model_source(model: str | Path) -> ModelSource:
    """Say whether `model` is a diffusers folder, a single-file checkpoint or a hub id."""
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise GenerationError(
                f"{path} is a folder but not a diffusers pipeline (no model_index.json)"
            )
        return ModelSource(SourceKind.FOLDER, str(path))
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise GenerationError(
                f"{path} is not a checkpoint: expected one of {', '.join(SINGLE_FILE_SUFFIXES)}"
            )
        return ModelSource(SourceKind.SINGLE_FILE, str(path))
    looks_like_path = (
        path.is_absolute()
        or text.startswith((".", "~"))
        or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    )
    if not looks_like_path and _HUB_ID.match(text):
        return ModelSource(SourceKind.HUB, text)
    raise GenerationError(f"model not found: {text} (no such file or folder)")


def torch_dtype(preference: str, device: str) -> torch.dtype:
    """fp16 on CUDA and fp32 elsewhere for "auto"; otherwise the named dtype."""
    if preference == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if preference not in _DTYPES:
        raise GenerationError(f"unknown dtype {preference!r}; use auto or one of {sorted(_DTYPES)}")
    return _DTYPES[preference]


# Without a config folder diffusers fetches a single file's configs from the hub.
NO_CONFIG_HINT = (
    "; a single-file checkpoint loads offline with a config folder: set "
    "LORA_PIPELINE_TOKENIZER_DIR to a CLIP tokenizer folder (e.g. ComfyUI's comfy/sd1_tokenizer)"
)


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_pipeline(
    model: str | Path, dtype: torch.dtype = torch.float32, config: str | Path | None = None
) -> Any:
    """Load a text-to-image pipeline (SD1.x or SDXL) with the safety checker off, on the CPU:
    the one loader of generation, evaluation and the built-in trainer.

    `config` is a diffusers folder whose component configs describe a single-file checkpoint, so
    that it loads without fetching configs from the hub; every single-file layout of
    `generation.single_file` loads. A model that cannot be loaded is a GenerationError of one line
    naming the file and the problem.
    """
    source = resolve_model_source(model)
    try:
        if source.kind is SourceKind.SINGLE_FILE:
            return _load_single_file(Path(source.location), dtype, config)
        import diffusers

        return diffusers.AutoPipelineForText2Image.from_pretrained(
            source.location,
            dtype=dtype,
            local_files_only=source.kind is SourceKind.FOLDER,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except CheckpointError as error:
        raise GenerationError(str(error)) from error
    except Exception as error:  # noqa: BLE001 - diffusers raises many kinds; each becomes one line
        hint = NO_CONFIG_HINT if source.kind is SourceKind.SINGLE_FILE and config is None else ""
        raise GenerationError(
            f"could not load the {source.kind.value} {model}: {_first_line(error)}{hint}"
        ) from error


# How a checkpoint missing some of its weights is described.
INCOMPLETE = "is incomplete (a partial download or a broken conversion?)"


def _load_single_file(path: Path, dtype: torch.dtype, config: str | Path | None) -> Any:
    import diffusers

    layout = checkpoint_layout(path)
    sdxl = layout.version == "sdxl"
    pipeline_class = (
        diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
    )
    options: dict[str, Any] = (
        {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    )
    if config is not None:
        options.update(config=str(config), local_files_only=True)
    if layout.clip_without_text_model:
        # diffusers finds no CLIP in this layout: the encoder is built here and handed over.
        if config is None:
            raise CheckpointError(
                f"{path}: its text encoder keys have no text_model. segment, which loads only "
                "with a config folder: set LORA_PIPELINE_TOKENIZER_DIR to a CLIP tokenizer folder"
            )
        prefix = CLIP_PREFIXES[layout.version]
        options["text_encoder"] = clip_text_encoder(
            path, prefix, Path(config) / "text_encoder", dtype
        )
    try:
        pipeline = pipeline_class.from_single_file(str(path), dtype=dtype, **options)
    except NotImplementedError as error:
        # diffusers leaves a weight the file lacks on the meta device, then fails moving it.
        if "meta tensor" not in str(error):
            raise
        raise CheckpointError(f"{path} {INCOMPLETE} (its UNet or VAE lacks weights)") from error
    _refuse_missing_weights(path, pipeline)
    return pipeline


def _refuse_missing_weights(path: Path, pipeline: Any) -> None:
    """A component whose weights the file did not hold is left on the meta device by diffusers
    (a torn text encoder loads "fine" and fails at the first prompt): refused here instead."""
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        component = getattr(pipeline, name, None)
        if component is None:
            continue
        missing = [key for key, tensor in component.state_dict().items() if tensor.is_meta]
        if missing:
            raise CheckpointError(
                f"{path} {INCOMPLETE}: {len(missing)} weights of its {name} are missing "
                f"(first: {missing[0]})"
            )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DiffusersGenerator:
    """One diffusers pipeline, loaded on first use, shared by threads one call at a time."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        config: str | Path | None = None,
    ) -> None:
        self.model = str(model)
        self.device = torch_device(device)
        self.dtype = torch_dtype(dtype, self.device)
        self.config = config
        resolve_model_source(self.model)  # a missing model fails here, not at the first image
        self._lock = threading.RLock()
        self._pipe: Any = None
        self._base_scheduler_config: dict[str, Any] = {}
        # adapter name → LoRA file, oldest first
        self._adapters: OrderedDict[str, Path] = OrderedDict()
        self._hashes: dict[tuple[str, int, int], str] = {}

    def _pipeline(self) -> Any:
        with self._lock:
            if self._pipe is None:
                pipe = load_pipeline(self.model, self.dtype, self.config)
                pipe.set_progress_bar_config(disable=True)
                self._base_scheduler_config = dict(pipe.scheduler.config)
                self._pipe = pipe.to(self.device)
            return self._pipe

    def _adapter_name(self, path: Path) -> str:
        # Named by content, so a LoRA file rewritten in place is loaded afresh.
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in self._hashes:
            self._hashes[key] = _file_sha256(path)
        return "lora_" + self._hashes[key][:16]

    def _load_adapter(self, pipe: Any, path: Path) -> str:
        name = self._adapter_name(path)
        if name in self._adapters:
            self._adapters.move_to_end(name)
            return name
        while len(self._adapters) >= MAX_CACHED_LORAS:
            oldest, _ = self._adapters.popitem(last=False)
            pipe.delete_adapters(oldest)
        try:
            with warnings.catch_warnings():
                # Several adapters on one UNet is what the cache is for; peft warns about it.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(str(path), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise GenerationError(f"could not load LoRA {path}: {error}") from error
        self._adapters[name] = path
        return name

    def _activate_lora(self, pipe: Any, loras: Loras) -> bool:
        stack = lora_stack(loras)
        if not stack:
            return False
        missing = [str(spec.path) for spec in stack if not Path(spec.path).is_file()]
        if missing:
            raise GenerationError(f"LoRA file not found: {', '.join(missing)}")
        if len(stack) > MAX_CACHED_LORAS:
            raise GenerationError(f"at most {MAX_CACHED_LORAS} LoRAs can be stacked")
        weights: dict[str, float] = {}
        for spec in stack:
            # The same file twice in a stack is one adapter at the summed strength.
            name = self._load_adapter(pipe, Path(spec.path))
            weights[name] = weights.get(name, 0.0) + float(spec.strength)
        pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        pipe.enable_lora()
        return True

    def generate(self, request: GenerationRequest, lora: Loras = None) -> Image.Image:
        """One image for `request`, with the LoRA (or stack) applied at its strength (0 or
        None: no LoRA)."""
        with self._lock:
            pipe = self._pipeline()
            pipe.scheduler = scheduler_for(
                request.sampler, request.scheduler, self._base_scheduler_config
            )
            lora_active = self._activate_lora(pipe, lora)
            try:
                # A CPU generator gives the same noise on every device, so a seed means the same
                # image on a laptop and on a GPU server (up to float precision).
                generator = torch.Generator(device="cpu").manual_seed(request.seed)
                output = pipe(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt or None,
                    num_inference_steps=request.steps,
                    guidance_scale=request.cfg,
                    width=request.width,
                    height=request.height,
                    generator=generator,
                    output_type="pil",
                )
            finally:
                if lora_active:
                    pipe.disable_lora()
            return output.images[0]

    def close(self) -> None:
        """Drop the pipeline and give its memory back; the next call loads it again."""
        with self._lock:
            self._pipe = None
            self._adapters.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def __enter__(self) -> DiffusersGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
