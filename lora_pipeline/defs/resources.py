"""Dagster resources: thin handles on the registry, the data root and the models.

Each resource reads `Settings.from_env()` unless a field overrides it, so `dagster dev`, the CLI
and the tests share one configuration.
"""

from __future__ import annotations

import gc

from dagster import ConfigurableResource

from lora_pipeline.config import Settings, torch_device
from lora_pipeline.generation.local import DiffusersGenerator
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry.db import Registry, migrate


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
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_GENERATORS: dict[tuple[str, str], DiffusersGenerator] = {}


def _generator_for(model: str, device: str) -> DiffusersGenerator:
    key = (model, device)
    if key not in _GENERATORS:
        _GENERATORS[key] = DiffusersGenerator(model, device=device)
    return _GENERATORS[key]
