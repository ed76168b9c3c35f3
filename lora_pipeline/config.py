"""Settings shared by the CLI, the Dagster code location and the review app.

Everything is read from environment variables so that `dagster dev`, the CLI and CI agree
without a config file; each one has a default under the project home.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "LORA_PIPELINE_"


SETTINGS_FILE = "settings.json"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


def _home() -> Path:
    return Path(_env("HOME", str(Path.home() / ".lora_pipeline"))).expanduser().resolve()


def _saved(home: Path) -> dict[str, str]:
    """Values saved by `lora-pipeline init/demo`, so `dagster dev` finds the demo models."""
    path = home / SETTINGS_FILE
    if not path.is_file():
        return {}
    return {str(k).upper(): str(v) for k, v in json.loads(path.read_text()).items() if v}


def save_settings(home: Path, **values: str | None) -> Path:
    """Merge values into the home's settings file (environment variables still win)."""
    path = home / SETTINGS_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({k.lower(): v for k, v in values.items() if v is not None})
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Settings:
    """Where the registry and the data live, and which models the stages use."""

    home: Path
    database_url: str
    data_root: Path
    # A diffusers folder, a single-file .safetensors checkpoint, or a hub id (online machines).
    base_model: str | None = None
    comfyui_url: str | None = None
    comfyui_loras_dir: Path | None = None
    # Generation through ComfyUI (when comfyui_url is set): the checkpoint name as ComfyUI's
    # CheckpointLoaderSimple lists it (default: the base model's file name) and how long one
    # prompt may take, queueing included.
    comfyui_checkpoint: str | None = None
    comfyui_timeout: float = 600.0
    # --- evaluation (issue 7) ---
    # The CLIP vision model for identity similarity (default: the reference identifier's
    # model, when that is the identifier) and a full CLIP model for the CLIP score; unset:
    # that score is not measured.
    identity_model: str | None = None
    clip_model: str | None = None
    device: str = "auto"
    # --- ingest (issue 3) ---
    # Identification backend: llava:<folder|hub id>, ollama:<url>#<model>, reference:<folder>.
    identifier: str | None = None
    # Per-project identifier specs, overriding `identifier`: (project slug, spec) pairs, from
    # LORA_PIPELINE_PROJECT_IDENTIFIERS='{"project-slug": "spec"}'. A tuple keeps Settings hashable.
    project_identifiers: tuple[tuple[str, str], ...] = ()
    # Cosine similarity a frame needs to an approved image for reference matching.
    reference_threshold: float = 0.85
    # The ComfyUI output folder scanned by the comfyui_output_sensor (None: not scanned), and
    # the project of files whose name matches no character or project.
    comfyui_output_dir: Path | None = None
    comfyui_project: str | None = None
    # Frame filters: bits of perceptual-hash distance that make a near-duplicate (-1: off),
    # frame difference below which a shot is static (-1: off), blur threshold (variance of
    # the Laplacian; unset: off), smallest frame side kept.
    near_duplicate_distance: int = 8
    static_threshold: float = 0.01
    min_sharpness: float | None = None
    min_side: int = 128
    # --- training (issue 6) ---
    # A kohya sd-scripts checkout (trained_lora uses the kohya backend when it is set) and the
    # Python that runs it (default: its venv/ or .venv/, else this one); a CLIP tokenizer folder
    # (vocab.json + merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer) to read single-file
    # checkpoints offline and for kohya's --tokenizer_cache_dir.
    kohya_scripts_dir: Path | None = None
    kohya_python: str | None = None
    tokenizer_dir: Path | None = None

    # --- dataset (issue 5) ---
    # Face detector for shot splits: a YOLO-style .onnx file, or insightface:<root>[#<pack>].
    face_detector: str | None = None
    face_threshold: float = 0.5
    # WD14-style tagger: the .onnx model and its selected_tags.csv (default: beside the model).
    tagger: str | None = None
    tagger_tags: str | None = None
    # auto, design, tags, vlm or a combination such as design+tags.
    caption_strategy: str = "auto"
    # The vlm strategy's captioner: 'package.module:factory' returning a vision.Captioner.
    captioner: str | None = None
    # Concept taxonomy: a JSON file, or a folder of <project slug>.json (default: packaged one).
    taxonomy: str | None = None
    # Tags left out of captions, comma-separated (unset: the default blacklist).
    tag_blacklist: tuple[str, ...] | None = None
    # Quality gate: the smallest short side of a dataset image, and whether a smaller image
    # blocks training ("block") or only warns ("warn", so 64-px demo images pass).
    min_short_side: int = 512
    resolution_gate: str = "warn"

    def identity_model_id(self) -> str | None:
        """The embedder of identity similarity: the configured one, else the model of a
        reference identifier."""
        if self.identity_model:
            return self.identity_model
        spec = self.identifier or ""
        return spec.split(":", 1)[1] if spec.startswith("reference:") else None

    def identifier_for(self, project_slug: str) -> str | None:
        """The identifier spec of a project: its own, else the default one."""
        return dict(self.project_identifiers).get(project_slug) or self.identifier

    @classmethod
    def from_env(cls) -> Settings:
        home = _home()
        saved = _saved(home)

        def get(name: str, default: str | None = None) -> str | None:
            return _env(name, saved.get(name, default))

        data_root = Path(get("DATA_ROOT", str(home / "data"))).expanduser().resolve()
        loras_dir = get("COMFYUI_LORAS_DIR")
        return cls(
            home=home,
            database_url=get("DATABASE_URL", f"sqlite:///{home / 'registry.db'}"),
            data_root=data_root,
            base_model=get("BASE_MODEL"),
            comfyui_url=get("COMFYUI_URL"),
            comfyui_loras_dir=Path(loras_dir).expanduser() if loras_dir else None,
            comfyui_checkpoint=get("COMFYUI_CHECKPOINT"),
            identity_model=get("IDENTITY_MODEL"),
            clip_model=get("CLIP_MODEL"),
            comfyui_timeout=_positive_float(get("COMFYUI_TIMEOUT"), "COMFYUI_TIMEOUT", 600.0),
            device=get("DEVICE", "auto") or "auto",
            **_ingest_settings(get),
            **_training_settings(get),
            **_dataset_settings(get),
        )

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster_home")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)


def _positive_float(text: str | None, name: str, default: float) -> float:
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{ENV_PREFIX}{name} must be a positive number of seconds, not {text!r}")
    return value


def torch_device(preference: str = "auto") -> str:
    """The torch device string for a preference of auto / cpu / cuda[:n]."""
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _ingest_settings(get: Callable[..., str | None]) -> dict[str, Any]:
    """The ingest fields of Settings from LORA_PIPELINE_* variables (see Settings)."""
    output_dir = get("COMFYUI_OUTPUT_DIR")
    sharpness = get("MIN_SHARPNESS")
    try:
        project_identifiers = json.loads(get("PROJECT_IDENTIFIERS") or "{}")
        values: dict[str, Any] = {
            "identifier": get("IDENTIFIER"),
            "project_identifiers": tuple(
                sorted((str(k), str(v)) for k, v in project_identifiers.items())
            ),
            "reference_threshold": float(get("REFERENCE_THRESHOLD", "0.85") or 0.85),
            "comfyui_output_dir": Path(output_dir).expanduser() if output_dir else None,
            "comfyui_project": get("COMFYUI_PROJECT"),
            "near_duplicate_distance": int(get("NEAR_DUPLICATE_DISTANCE", "8") or 8),
            "static_threshold": float(get("STATIC_THRESHOLD", "0.01") or 0.01),
            "min_sharpness": float(sharpness) if sharpness else None,
            "min_side": int(get("MIN_SIDE", "128") or 128),
        }
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"invalid ingest setting in {ENV_PREFIX}* variables: {exc}") from exc
    return values


def _training_settings(get: Callable[..., str | None]) -> dict[str, Any]:
    """The training fields of Settings from LORA_PIPELINE_* variables (see Settings)."""
    kohya_dir, tokenizer_dir = get("KOHYA_SCRIPTS_DIR"), get("TOKENIZER_DIR")
    return {
        "kohya_scripts_dir": Path(kohya_dir).expanduser() if kohya_dir else None,
        "kohya_python": get("KOHYA_PYTHON"),
        "tokenizer_dir": Path(tokenizer_dir).expanduser() if tokenizer_dir else None,
    }


def _dataset_settings(get: Callable[..., str | None]) -> dict[str, Any]:
    """The dataset fields of Settings from LORA_PIPELINE_* variables (see Settings)."""
    blacklist = get("TAG_BLACKLIST")
    gate = (get("RESOLUTION_GATE", "warn") or "warn").strip().lower()
    if gate not in ("warn", "block"):
        raise ValueError(f"{ENV_PREFIX}RESOLUTION_GATE must be 'warn' or 'block', got {gate!r}")
    try:
        return {
            "face_detector": get("FACE_DETECTOR"),
            "face_threshold": float(get("FACE_THRESHOLD", "0.5") or 0.5),
            "tagger": get("TAGGER"),
            "tagger_tags": get("TAGGER_TAGS"),
            "caption_strategy": get("CAPTION_STRATEGY", "auto") or "auto",
            "captioner": get("CAPTIONER"),
            "taxonomy": get("TAXONOMY"),
            "tag_blacklist": (
                tuple(t.strip() for t in blacklist.split(",") if t.strip()) if blacklist else None
            ),
            "min_short_side": int(get("MIN_SHORT_SIDE", "512") or 512),
            "resolution_gate": gate,
        }
    except ValueError as exc:
        raise ValueError(f"invalid dataset setting in {ENV_PREFIX}* variables: {exc}") from exc
