"""The training package's structure rules: no module imports another's private names, no import
cycle among its modules, every error is a PipelineError, and files are published atomically."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import lora_pipeline
from lora_pipeline.errors import PipelineError
from lora_pipeline_tests.test_import_cycles import cycles, import_graph

PACKAGE = Path(lora_pipeline.__file__).parent
TRAINING = PACKAGE / "training"
# The Dagster layer of the stage is held to the same rule.
SOURCES = sorted(TRAINING.glob("*.py")) + [PACKAGE / "defs" / "training.py"]
MODULES = sorted(
    f"lora_pipeline.training.{p.stem}" for p in TRAINING.glob("*.py") if p.stem != "__init__"
)
# Renames that are not a file publish: a whole folder replaced at once (files.py publishes files).
FOLDER_RENAMES = {"checkpoint.py"}


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_pipeline"):
            found += [
                f"{path.name}:{node.lineno} {node.module}.{a.name}"
                for a in node.names
                if a.name.startswith("_")
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{path.name}:{node.lineno} {a.name}"
                for a in node.names
                if any(part.startswith("_") for part in a.name.split("."))
                and a.name.startswith("lora_pipeline")
            ]
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    found = [hit for path in SOURCES for hit in _private_imports(path)]
    assert not found, "make the shared name public where it belongs:\n" + "\n".join(found)


def test_the_private_import_check_sees_one(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from lora_pipeline.training.trainer import _TrainingRun, train_lora\n")
    assert _private_imports(source) == ["m.py:1 lora_pipeline.training.trainer._TrainingRun"]


def test_no_import_cycle_among_the_training_modules() -> None:
    graph = import_graph(PACKAGE)
    training = {m: {t for t in graph[m] if t in MODULES} for m in MODULES}
    assert cycles(training) == []


def test_the_backends_import_the_job_and_not_each_other() -> None:
    graph = import_graph(PACKAGE)
    assert "lora_pipeline.training.kohya_backend" not in graph["lora_pipeline.training.job"]
    assert "lora_pipeline.training.trainer" not in graph["lora_pipeline.training.kohya_backend"]
    assert "lora_pipeline.training.trainer" not in graph["lora_pipeline.training.job"]


def _error_classes() -> list[type[BaseException]]:
    classes = []
    for name in MODULES:
        module = importlib.import_module(name)
        classes += [
            value
            for value in vars(module).values()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == name
        ]
    return classes


@pytest.mark.parametrize("error", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_training_error_is_a_pipeline_error_with_its_builtin_base(
    error: type[BaseException],
) -> None:
    assert issubclass(error, PipelineError)
    builtin = [c for c in error.__mro__ if c.__module__ == "builtins"]
    assert builtin[0] not in (Exception, BaseException), "keep the built-in base callers catch"


def test_files_are_published_through_the_atomic_helpers() -> None:
    # A hand-written write-then-rename (or a fixed temporary name) is what files.py replaces.
    found = []
    for path in TRAINING.glob("*.py"):
        if path.name in FOLDER_RENAMES:
            continue
        text = path.read_text("utf-8")
        found += [f"{path.name}: {w}" for w in ("os.replace", ".rename(", "mkstemp") if w in text]
    assert not found, found
