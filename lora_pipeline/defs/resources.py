"""Dagster resources: thin handles on the registry, the data root and the model runtime.

Each reads the process's settings (`Settings.current()`); a field set on a resource (in a test,
or in the launchpad's resource config) overrides that one setting. `ModelsResource`'s fields are
derived from the settings declarations, so a new setting is an override here with no edit.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from pydantic import create_model

from lora_pipeline.config import Settings
from lora_pipeline.media.store import DataRoot
from lora_pipeline.model_runtime import ModelRuntime
from lora_pipeline.registry.db import Registry, migrate


class RegistryResource(ConfigurableResource):
    """The registry database; `database_url` defaults to the configured one."""

    database_url: str | None = None

    def url(self) -> str:
        return self.database_url or Settings.current().database_url

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
        return DataRoot(self.path or Settings.current().data_root)


class _ModelsResourceBase(ConfigurableResource):
    """The model runtime of the settings, with this resource's fields as overrides."""

    def settings(self) -> Settings:
        overrides = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if getattr(self, name) is not None
        }
        current = Settings.current()
        return current.with_overrides(**overrides) if overrides else current

    def runtime(self) -> ModelRuntime:
        return ModelRuntime(self.settings())


# Settings that are not the models' business: the registry and the data root have their own
# resources, the review token and test hooks are not for runs.
_NOT_MODEL_SETTINGS = frozenset(
    {"home", "database_url", "data_root", "dagster_home", "gpu_lock_dir", "review_token"}
    | {"training_kill_after_epoch"}
)
_CONFIG_TYPES = (str, int, float, bool)


def _override_type(annotation: Any) -> type | None:
    """The Dagster config type of a setting (`str | None` for a path), None for a setting that
    does not fit one plain value (tuples, literals are given as text)."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType | typing._UnionGenericAlias):  # type: ignore[attr-defined]
        annotation = arguments[0] if len(arguments) == 1 else None
    if annotation is Path:
        return str
    if typing.get_origin(annotation) is typing.Literal:
        return str
    return annotation if annotation in _CONFIG_TYPES else None


def _models_resource_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        kind = _override_type(field.annotation)
        if name not in _NOT_MODEL_SETTINGS and kind is not None:
            fields[name] = (kind | None, None)
    return fields


ModelsResource = create_model(
    "ModelsResource",
    __base__=_ModelsResourceBase,
    __module__=__name__,
    __doc__="Model locations and the process-wide, lazily loaded model instances "
    "(fields: overrides of the settings of the same name).",
    **_models_resource_fields(),
)
