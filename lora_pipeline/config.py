"""Settings shared by the CLI, the Dagster code location and the review app.

Everything is read from environment variables so that `dagster dev`, the CLI and CI agree
without a config file; each one has a default under the project home.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

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
    device: str = "auto"

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
            device=get("DEVICE", "auto") or "auto",
        )

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster_home")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)


def torch_device(preference: str = "auto") -> str:
    """The torch device string for a preference of auto / cpu / cuda[:n]."""
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
