"""Every error class the media, vision, dataset and evaluation packages (and the demo, tiny
models and model configs) define is a PipelineError, so the CLI and the review app print its
one-line message; each keeps its built-in base, so callers catching ValueError still do."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

from lora_pipeline.errors import PipelineError

PACKAGES = ("media", "vision", "dataset", "evaluation", "model_configs")
MODULES = ("demo", "tiny_models")


def _modules() -> list[ModuleType]:
    found = [importlib.import_module(f"lora_pipeline.{name}") for name in MODULES]
    for name in PACKAGES:
        package = importlib.import_module(f"lora_pipeline.{name}")
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            found.append(importlib.import_module(info.name))
    return found


def _defined_errors() -> list[type[BaseException]]:
    return [
        value
        for module in _modules()
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]


ERRORS = _defined_errors()


def test_the_packages_define_errors() -> None:
    assert len(ERRORS) >= 20


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__qualname__)
def test_error_is_a_pipeline_error_with_a_builtin_base(error: type[BaseException]) -> None:
    assert issubclass(error, PipelineError)
    builtin = [base for base in error.__mro__ if base.__module__ == "builtins"]
    assert builtin[0] is not Exception, f"{error.__name__} lost its built-in base"
