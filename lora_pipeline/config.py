"""The one settings object of the CLI, the Dagster code location, the review app and the trainer.

Every setting is declared once below (type, default, one line of help) and read from, in this
order of precedence: values passed in code (tests, resource overrides), `LORA_PIPELINE_*`
environment variables, `$LORA_PIPELINE_HOME/settings.json` (written by `init` and `demo`, so
that `dagster dev` started later finds the demo models), and the default. It is read once per
process: `Settings.current()` returns the same object until the environment or the settings file
changes. `describe()` says where each value came from; `check()` validates paths and URLs. The
README's configuration table is generated from these declarations (`markdown_table()`).

This is the only module that reads the environment; code that starts a child process or
configures a library asks it for the environment to use.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_write_text

ENV_PREFIX = "LORA_PIPELINE_"
SETTINGS_FILE = "settings.json"
HOME_ENV = ENV_PREFIX + "HOME"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
DEFAULT_HOME = Path("~/.lora_pipeline")


class SettingsError(PipelineError, ValueError):
    """A setting has a value it cannot take; the message names the variable."""


def home_from_environment() -> Path:
    """The home as the environment names it, without reading any settings (so it is known
    even when the settings are what fails)."""
    value = os.environ.get(HOME_ENV) or str(DEFAULT_HOME)
    return Path(value).expanduser().resolve()


def _read_settings_file(home: Path) -> dict[str, Any]:
    path = home / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SettingsError(f"{path}: cannot read the settings file ({error})") from None
    if not isinstance(saved, dict):
        raise SettingsError(f"{path}: the settings file must hold a JSON object")
    return {str(k).lower(): v for k, v in saved.items() if v not in (None, "")}


class _SettingsFileSource(PydanticBaseSettingsSource):
    """`<home>/settings.json`: below the environment, above the defaults."""

    def __init__(self, settings_cls: type[BaseSettings], home: object = None) -> None:
        super().__init__(settings_cls)
        self._home = Path(str(home)).expanduser().resolve() if home else home_from_environment()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        known = self.settings_cls.model_fields
        return {k: v for k, v in _read_settings_file(self._home).items() if k in known}


def _path_or_none(value: object) -> object:
    return Path(value).expanduser() if isinstance(value, str) and value else value


class Settings(BaseSettings):
    """Where the registry and the data live, which services and models the stages use."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore"
    )

    # --- where things live ---
    home: Path = Field(
        DEFAULT_HOME, description="project home: settings.json, the registry, the Dagster instance"
    )
    database_url: str = Field(
        "", description="the registry; any SQLAlchemy URL, e.g. `postgresql://user@host/lora`"
    )
    data_root: Path = Field(
        Path(), description="images, datasets, LoRAs, grids; nothing is written outside it"
    )
    dagster_home: Path = Field(
        Path(),
        validation_alias=AliasChoices(DAGSTER_HOME_ENV, "dagster_home"),
        description="the Dagster instance (SQLite unless its `dagster.yaml` says otherwise)",
    )
    gpu_lock_dir: Path = Field(
        Path(), description="where the per-device GPU locks live; local to each host, never on a "
        "shared mount"
    )
    # --- executing steps (README "Production mode") ---
    executor: Literal["multiprocess", "in_process", "celery"] = Field(
        "multiprocess", description="how a run executes its steps: `multiprocess` (each step in "
        "a child process of the run), `in_process`, or `celery` (steps go to `lora-pipeline "
        "worker`s through the broker: GPU steps to the `gpu` queue, the rest to `cpu`)"
    )
    broker_url: str = Field(
        "pyamqp://guest@127.0.0.1:5672//", description="the Celery broker of the `celery` "
        "executor and of `lora-pipeline worker` (RabbitMQ `pyamqp://…` or Redis `redis://…`)"
    )
    # --- models ---
    base_model: str | None = Field(
        None, description="a diffusers folder, a single-file `.safetensors` checkpoint, or a hub "
        "id on an online machine (`demo` sets the toy world's model)"
    )
    device: str = Field("auto", description="`auto` (cuda when available), `cpu`, `cuda[:n]`")
    tokenizer_dir: Path | None = Field(
        None, description="a CLIP tokenizer folder (vocab.json + merges.txt) so single-file "
        "checkpoints load offline; also kohya's `--tokenizer_cache_dir`"
    )
    # --- ComfyUI ---
    comfyui_url: str | None = Field(
        None, description="ComfyUI server: generation, clips and eval grids go through it; its "
        "VRAM is freed before training"
    )
    comfyui_checkpoint: str | None = Field(
        None, description="the checkpoint as ComfyUI lists it (default: the base model's file name)"
    )
    comfyui_timeout: float = Field(
        600.0, gt=0, allow_inf_nan=False,
        description="seconds one ComfyUI prompt may take, queueing included",
    )
    comfyui_loras_dir: Path | None = Field(
        None, description="trained LoRAs are copied here (ComfyUI's `models/loras`)"
    )
    comfyui_output_dir: Path | None = Field(
        None, description="ComfyUI output folder scanned by `comfyui_output_sensor`"
    )
    comfyui_project: str | None = Field(
        None, description="project of ComfyUI output files whose name matches no character"
    )
    # The stock image-to-video template's model files, as ComfyUI lists them (None: the
    # template's own, Comfy-Org's Wan 2.1 I2V 480p release names).
    comfyui_video_model: str | None = Field(
        None, description="the image-to-video UNet in ComfyUI's `models/diffusion_models` "
        "(default `wan2.1_i2v_480p_14B_fp16.safetensors`)"
    )
    comfyui_video_text_encoder: str | None = Field(
        None, description="its text encoder in `models/text_encoders` "
        "(default `umt5_xxl_fp8_e4m3fn_scaled.safetensors`)"
    )
    comfyui_video_vae: str | None = Field(
        None, description="its VAE in `models/vae` (default `wan_2.1_vae.safetensors`)"
    )
    comfyui_video_clip_vision: str | None = Field(
        None, description="its CLIP vision model in `models/clip_vision` "
        "(default `clip_vision_h.safetensors`)"
    )
    # --- ingest ---
    identifier: str | None = Field(
        None, description="`llava:<path or hub id>`, `ollama:<url>#<model>`, `reference:<clip "
        "path>` or `ccip:<model.onnx>[#<metrics.onnx>]`: who is in a frame; "
        "`<reference:…|ccip:…>+<llava:…|ollama:…>` matches first and asks the VLM when unsure"
    )
    project_identifiers: Annotated[tuple[tuple[str, str], ...], NoDecode] = Field(
        (), description='per-project identifiers, JSON: `{"project-slug": "spec"}`'
    )
    reference_threshold: float = Field(
        0.85, ge=-1, le=1, description="similarity a frame needs for reference matching (cosine; "
        "1 − difference for a `ccip:` model); a project's `match_threshold` overrides it"
    )
    person_detector: str | None = Field(
        None, description="YOLO-style ONNX anime person detector: each person in a project-mode "
        "frame is cropped and identified on its own"
    )
    person_threshold: float = Field(0.5, ge=0, le=1, description="person detector score threshold")
    head_detector: str | None = Field(
        None, description="YOLO-style ONNX anime head detector: head and upper-body crops of a "
        "detected person (three-stage crops) for the shot types a dataset lacks"
    )
    head_threshold: float = Field(0.5, ge=0, le=1, description="head detector score threshold")
    crop_margin: float = Field(
        0.15, ge=0, le=1, description="margin around a detected person's crop, a share of its "
        "box's width and height"
    )
    whole_frames: bool = Field(
        False, description="also put a whole frame that shows several characters into each "
        "one's dataset (off: only single-character crops)"
    )
    near_duplicate_distance: int = Field(
        8, ge=-1, le=64, description="perceptual-hash bits that make a near-duplicate (-1: off)"
    )
    static_threshold: float = Field(
        0.01, ge=-1, description="frame difference below which a shot is static (-1: off)"
    )
    min_sharpness: float | None = Field(
        None, ge=0, description="smallest variance of the Laplacian of a kept frame (unset: off)"
    )
    min_side: int = Field(128, ge=1, description="smallest frame side kept at ingest, in pixels")
    download_stall_s: float = Field(
        20.0, gt=0, le=3600, description="a download that gets no data for this many seconds fails"
    )
    # --- dataset ---
    face_detector: str | None = Field(
        None, description="`face.onnx` (YOLO-style) or `insightface:<root>[#pack]` for "
        "close/mid/far shots"
    )
    face_threshold: float = Field(0.5, ge=0, le=1, description="face detector score threshold")
    tagger: str | None = Field(None, description="WD14-style ONNX tagger model")
    tagger_tags: str | None = Field(
        None, description="the tagger's `selected_tags.csv` (default: beside the model)"
    )
    caption_strategy: str = Field(
        "auto", description="`auto`, `design`, `tags`, `vlm` or combinations like `design+tags`"
    )
    captioner: str | None = Field(
        None, description="the vlm strategy's captioner, `package.module:factory` (default: the "
        "identifier's VLM)"
    )
    taxonomy: str | None = Field(
        None, description="concept taxonomy: a JSON file or a folder of `<project>.json` "
        "(default: packaged)"
    )
    tag_blacklist: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None, description="tags left out of captions, comma-separated (default: built-in list)"
    )
    min_short_side: int = Field(512, ge=1, description="quality gate: smallest short image side")
    resolution_gate: Literal["warn", "block"] = Field(
        "warn", description="whether a smaller image blocks training or only warns"
    )
    # --- training ---
    kohya_scripts_dir: Path | None = Field(
        None, description="train with kohya sd-scripts (this checkout) instead of the built-in "
        "trainer"
    )
    kohya_python: str | None = Field(
        None, description="the Python that runs sd-scripts (default: its `venv/` or `.venv/`, "
        "else this one)"
    )
    training_yields: bool = Field(
        True, description="a running training pauses at a step boundary while interactive GPU "
        "work (images for review, regenerations) waits, then resumes exactly"
    )
    training_min_run_s: float = Field(
        60.0, ge=0, allow_inf_nan=False,
        description="shortest time a training runs between two pauses",
    )
    training_max_pause_s: float = Field(
        1800.0, ge=0, allow_inf_nan=False,
        description="longest a training waits in one pause before it takes the GPU back",
    )
    training_nice: int = Field(
        10, ge=0, le=19,
        description="CPU niceness of the training process (0: none): batch work leaves the "
        "CPU to interactive work first (a regeneration's start-up, the review app)",
    )
    training_settle_s: float = Field(
        600.0, ge=0, allow_inf_nan=False,
        description="the training sensor waits until a character's approved set has not "
        "changed for this long (0: train at once)",
    )
    # --- evaluation ---
    identity_model: str | None = Field(
        None, description="CLIP vision model, or `ccip:<model.onnx>[#<metrics.onnx>]`, for the "
        "eval's identity score (default: the `reference:`/`ccip:` identifier's model; `demo` "
        "sets the toy world's)"
    )
    clip_model: str | None = Field(
        None, description="full CLIP model (path or hub id) for the eval's CLIP score"
    )
    # --- feedback and review ---
    negative_terms: str | None = Field(
        None, description="rejection category → negative terms: a JSON file or inline JSON "
        "(default: `$HOME/negative_terms.json`, else built-in)"
    )
    echo_brain_url: str | None = Field(
        None, description="Echo Brain prompt advisor service (default: the built-in advisor)"
    )
    dagster_ui_url: str = Field(
        "http://127.0.0.1:3000", description="the Dagster web UI as reviewers reach it: the "
        "review app links each run to `<url>/runs/<run id>`"
    )
    review_token: str | None = Field(
        None, description="the review app's login token (needed for a non-loopback `--host`; "
        "at least 16 characters, no spaces)"
    )
    review_decode_pixels: int = Field(
        64_000_000, ge=1_000_000, description="pixels the review app decodes at once (uploaded "
        "images, thumbnails; about 4 bytes of memory each): more waits its turn"
    )
    # Names of the values passed in code, for `describe()`.
    _overridden: frozenset[str] = PrivateAttr(default_factory=frozenset)

    # --- test hooks ---
    training_kill_after_epoch: int | None = Field(
        None, ge=0, description="tests only: the trainer child kills itself after this epoch"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        home = getattr(init_settings, "init_kwargs", {}).get("home")
        return init_settings, env_settings, _SettingsFileSource(settings_cls, home)

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_home(cls, values: Any) -> Any:
        # The registry, data root and Dagster instance default to folders of the home.
        if not isinstance(values, dict):
            return values
        home = Path(values.get("home") or DEFAULT_HOME).expanduser().resolve()
        derived = {
            "database_url": f"sqlite:///{home / 'registry.db'}",
            "data_root": home / "data",
            "dagster_home": home / "dagster_home",
            "gpu_lock_dir": home / "locks",
        }
        filled = {k: v for k, v in values.items() if v not in (None, "")}
        return {**derived, **filled, "home": home}

    @field_validator("data_root", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator(
        "dagster_home", "gpu_lock_dir", "tokenizer_dir", "comfyui_loras_dir", "comfyui_output_dir",
        "kohya_scripts_dir", mode="before",
    )
    @classmethod
    def _expand_user(cls, value: object) -> object:
        return _path_or_none(value)

    @field_validator("project_identifiers", mode="before")
    @classmethod
    def _identifier_pairs(cls, value: object) -> object:
        # A JSON object in the environment or the file; pairs keep Settings hashable.
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except ValueError as error:
                raise ValueError(f"not a JSON object: {error}") from None
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), str(v)) for k, v in value.items()))
        return value

    @field_validator("tag_blacklist", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip()) or None
        return value

    @field_validator("resolution_gate", "executor", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        head, _, index = value.partition(":")
        if head not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
            raise ValueError("must be auto, cpu, cuda, cuda:<n> or mps")
        return value

    # --- reading ---

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Read the settings now (environment, settings file, defaults), with `overrides` on
        top; a bad value is one line naming its variable."""
        try:
            settings = cls(**overrides)
        except ValidationError as error:
            raise SettingsError(_one_line(error)) from None
        settings._overridden = frozenset(overrides)
        return settings

    @classmethod
    def current(cls) -> Settings:
        """The settings of this process, read once and re-read only when the environment or
        the settings file changes (tests change both between cases)."""
        key = _inputs_key()
        with _CURRENT_LOCK:
            cached = _CURRENT.get("settings")
            if cached is None or cached[0] != key:
                cached = (key, cls.from_env())
                _CURRENT["settings"] = cached
            return cached[1]

    def with_overrides(self, **changes: Any) -> Settings:
        """These settings with some values replaced (validated like any other value)."""
        try:
            changed = type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as error:
            raise SettingsError(_one_line(error)) from None
        changed._overridden = self._overridden | frozenset(changes)
        return changed

    # --- derived values ---

    def identity_model_id(self) -> str | None:
        """The embedder of identity similarity: the configured one, else the model of a
        reference identifier."""
        if self.identity_model:
            return self.identity_model
        # The matching half of a combined `<matching>+<vlm>` identifier.
        spec = (self.identifier or "").split("+", 1)[0]
        if spec.startswith("ccip:"):
            return spec
        return spec.split(":", 1)[1] if spec.startswith("reference:") else None

    def identifier_for(self, project_slug: str) -> str | None:
        """The identifier spec of a project: its own, else the default one."""
        return dict(self.project_identifiers).get(project_slug) or self.identifier

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)

    # --- explaining ---

    def describe(self) -> list[SettingValue]:
        """Every setting with its value and where the value came from."""
        saved = _read_settings_file(self.home)
        return [
            SettingValue(name, env_name(name), getattr(self, name), _origin(name, saved, self))
            for name in type(self).model_fields
        ]

    def check(self) -> list[str]:
        """One line per problem with a path or URL setting (empty: all fine)."""
        problems: list[str] = []
        for name, value in self:
            if value is None:
                continue
            problem = _check_value(name, value)
            if problem:
                problems.append(f"{env_name(name)}: {problem}")
        return problems


@dataclass(frozen=True)
class SettingValue:
    name: str
    variable: str
    value: Any
    origin: str  # default, file, environment or override

    def shown(self) -> str:
        """The value as it may be printed: secrets hidden, passwords taken out of URLs."""
        if self.value is None or self.value == ():
            return "unset"
        if self.name in _SECRETS:
            return "(set, hidden)"
        if isinstance(self.value, tuple):
            return ", ".join(":".join(v) if isinstance(v, tuple) else str(v) for v in self.value)
        return _without_password(str(self.value))


_CURRENT: dict[str, tuple[tuple, Settings]] = {}
_CURRENT_LOCK = threading.Lock()

# Settings never printed, and settings whose value is a path that must exist, or a URL.
_SECRETS = frozenset({"review_token"})
_EXISTING_PATHS = ("tokenizer_dir", "kohya_scripts_dir", "comfyui_output_dir", "comfyui_loras_dir")
_URLS = ("comfyui_url", "echo_brain_url", "dagster_ui_url")


def env_name(field_name: str) -> str:
    """The environment variable of a setting."""
    return DAGSTER_HOME_ENV if field_name == "dagster_home" else ENV_PREFIX + field_name.upper()


def _inputs_key() -> tuple:
    environment = tuple(sorted(_our_environment().items()))
    path = home_from_environment() / SETTINGS_FILE
    try:
        stat = path.stat()
        file_key: tuple = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        file_key = ()
    return environment, file_key


def _our_environment() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k == DAGSTER_HOME_ENV
    }


def _origin(name: str, saved: Mapping[str, Any], settings: Settings) -> str:
    if os.environ.get(env_name(name)):
        return "environment"
    if name in saved:
        return "file"
    return "override" if name in settings._overridden else "default"


def _check_value(name: str, value: Any) -> str | None:
    if name in _EXISTING_PATHS and not Path(value).exists():
        return f"{value} does not exist"
    if name in _URLS:
        parts = urlsplit(str(value))
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return f"{value!r} is not an http(s) URL"
    if name == "base_model" and _looks_like_path(str(value)) and not Path(value).exists():
        return f"{value} does not exist (a hub id has no slash at the start and no suffix)"
    return None


def _without_password(text: str) -> str:
    parts = urlsplit(text)
    if not parts.password:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", ".")) or value.lower().endswith((".safetensors", ".ckpt"))


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "settings"
    value = first.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"{env_name(field)}: {message}{shown}"


def save_settings(home: Path, **values: str | None) -> Path:
    """Merge values into the home's settings file (environment variables still win)."""
    path = home / SETTINGS_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({k.lower(): v for k, v in values.items() if v is not None})
    return atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True))


def torch_device(preference: str = "auto") -> str:
    """The torch device string for a preference of auto / cpu / cuda[:n]."""
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- the environment of child processes and libraries ---


def child_environment(**extra: str) -> dict[str, str]:
    """The environment for a child process: this one's, plus `extra`."""
    return {**os.environ, **extra}


def export_dagster_home(path: Path) -> None:
    """Make Dagster (which reads only the environment) use the instance at `path`."""
    os.environ[DAGSTER_HOME_ENV] = str(path)


def quiet_library_defaults() -> None:
    """Turn off the progress bars and chatter of the model libraries unless the user set them."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


# --- documentation ---


def markdown_table() -> str:
    """The README's configuration table, generated from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{env_name(name)}` | {_shown_default(name, field)} | {field.description} |")
    return "\n".join(rows)


# Defaults that follow the home, as the table shows them.
_DERIVED_DEFAULTS = {
    "home": f"`{DEFAULT_HOME}`",
    "database_url": "`sqlite:///$HOME/registry.db`",
    "data_root": "`$HOME/data`",
    "dagster_home": "`$HOME/dagster_home`",
    "gpu_lock_dir": "`$HOME/locks`",
}


def _shown_default(name: str, field: FieldInfo) -> str:
    if name in _DERIVED_DEFAULTS:
        return _DERIVED_DEFAULTS[name]
    return "unset" if field.default in (None, ()) else f"`{field.default}`"


TABLE_START = "<!-- settings table: generated by `lora-pipeline config --readme README.md` -->"
TABLE_END = "<!-- end of settings table -->"


def readme_with_table(readme: str) -> str:
    """The README text with its settings table replaced by the generated one."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise SettingsError(f"the README has no settings table markers ({TABLE_START})")
    return readme[: start + len(TABLE_START)] + "\n" + markdown_table() + "\n" + readme[end:]


def iter_variables() -> Iterator[str]:
    """Every environment variable a setting is read from."""
    return (env_name(name) for name in Settings.model_fields)
