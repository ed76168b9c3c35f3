"""The import-linter contracts of pyproject.toml hold, and they do catch a domain module that
imports Dagster (a contract that cannot fail proves nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lora_pipeline

PACKAGE = Path(lora_pipeline.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
DAGSTER_CONTRACT = "Domain code never imports Dagster or the Dagster layer"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (the dev extra has it)"
)


def _lint(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The copy first on the path, so grimp reads it instead of the installed package.
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _not_sources(folder: str, names: list[str]) -> list[str]:
    # Only the sources matter to the import graph.
    return [
        name
        for name in names
        if name == "__pycache__" or not (name.endswith(".py") or (Path(folder) / name).is_dir())
    ]


def _copy_package(target_parent: Path) -> Path:
    copy = target_parent / "lora_pipeline"
    shutil.copytree(PACKAGE, copy, ignore=_not_sources)
    return copy


def test_the_contracts_hold() -> None:
    result = _lint(PACKAGE.parent, PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_domain_module_importing_dagster_breaks_the_contract(tmp_path: Path) -> None:
    copy = _copy_package(tmp_path / "src")
    clean = _lint(copy.parent, tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (copy / "media" / "_bad.py").write_text("import dagster\n", encoding="utf-8")
    broken = _lint(copy.parent, tmp_path)
    assert broken.returncode != 0
    assert f"{DAGSTER_CONTRACT} BROKEN" in broken.stdout
    assert "lora_pipeline.media._bad -> dagster" in broken.stdout


# The Dagster layer and the two entry points that drive it (`lora-pipeline`, its demo).
DAGSTER_SIDE = {"defs", "definitions", "cli", "demo"}


def test_every_other_module_is_under_the_dagster_contract() -> None:
    """A new top-level module or package is Dagster-free unless it is added to DAGSTER_SIDE."""
    import tomllib

    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == DAGSTER_CONTRACT]
    listed = {name.removeprefix("lora_pipeline.") for name in contract["source_modules"]}
    modules = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").is_file())
    }
    assert listed == modules - DAGSTER_SIDE
