"""Every error class of the registry, review app, generation package, CLI and the shared
generation settings is a PipelineError (so the CLI and the review app print its one line), and
keeps the built-in base it had, so callers catching ValueError or TimeoutError still do."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest
from starlette.exceptions import HTTPException

from lora_pipeline.errors import PipelineError

PACKAGES = ("registry", "review", "generation")
MODULES = ("cli", "actions", "generation_settings")
# The built-in (or framework) bases these errors had before PipelineError.
KEPT_BASES = {
    "WorkflowError": ValueError,
    "NegativeTableError": ValueError,
    "InvalidSettingError": ValueError,
    "AdvisorError": RuntimeError,
    "GenerationError": RuntimeError,
    "ComfyUITimeoutError": TimeoutError,
    "BodyTooLarge": HTTPException,
}


def _modules() -> list[ModuleType]:
    found = [importlib.import_module(f"lora_pipeline.{name}") for name in MODULES]
    for name in PACKAGES:
        package = importlib.import_module(f"lora_pipeline.{name}")
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if ".migrations" not in info.name:
                found.append(importlib.import_module(info.name))
    return found


ERRORS = [
    value
    for module in _modules()
    for value in vars(module).values()
    if inspect.isclass(value)
    and issubclass(value, BaseException)
    and value.__module__ == module.__name__
]


def test_the_packages_define_errors() -> None:
    assert len(ERRORS) >= 15
    assert set(KEPT_BASES) <= {error.__name__ for error in ERRORS}


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__qualname__)
def test_error_is_a_pipeline_error_keeping_its_base(error: type[BaseException]) -> None:
    assert issubclass(error, PipelineError)
    if error.__name__ in KEPT_BASES:
        assert issubclass(error, KEPT_BASES[error.__name__])
