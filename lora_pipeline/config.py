"""Settings shared by the CLI, the Dagster code location and the review app.

Everything is read from environment variables so that `dagster dev`, the CLI and CI agree
without a config file; each one has a default under the project home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_PREFIX = "LORA_PIPELINE_"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


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
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("HOME", str(Path.home() / ".lora_pipeline"))).expanduser().resolve()
        data_root = Path(_env("DATA_ROOT", str(home / "data"))).expanduser().resolve()
        database_url = _env("DATABASE_URL", f"sqlite:///{home / 'registry.db'}")
        loras_dir = _env("COMFYUI_LORAS_DIR")
        return cls(
            home=home,
            database_url=database_url,
            data_root=data_root,
            base_model=_env("BASE_MODEL"),
            comfyui_url=_env("COMFYUI_URL"),
            comfyui_loras_dir=Path(loras_dir).expanduser() if loras_dir else None,
            device=_env("DEVICE", "auto") or "auto",
        )

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
