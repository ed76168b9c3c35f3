"""The one settings object: declared once, read from the environment, the home's settings.json
and defaults in that order, validated with one line naming the variable, documented in the
README by generation, and the only reader of the environment in the package."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import lora_pipeline
from lora_pipeline import config
from lora_pipeline.cli import main
from lora_pipeline.config import Settings, SettingsError, env_name, save_settings
from lora_pipeline.defs.resources import ModelsResource

PACKAGE = Path(lora_pipeline.__file__).parent
README = PACKAGE.parent / "README.md"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(home))
    for variable in config.iter_variables():
        if variable != "LORA_PIPELINE_HOME":
            monkeypatch.delenv(variable, raising=False)
    return home


def test_defaults_live_under_the_home(home: Path) -> None:
    settings = Settings.current()
    assert settings.home == home.resolve()
    assert settings.database_url == f"sqlite:///{home.resolve() / 'registry.db'}"
    assert settings.data_root == home.resolve() / "data"
    assert settings.dagster_home == home.resolve() / "dagster_home"
    assert settings.comfyui_timeout == 600.0 and settings.device == "auto"


def test_environment_beats_the_file_which_beats_the_default(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_settings(home, base_model="/models/from-file.safetensors", comfyui_url="http://f:1")
    monkeypatch.setenv("LORA_PIPELINE_COMFYUI_URL", "http://127.0.0.1:8188")
    settings = Settings.current()
    assert settings.base_model == "/models/from-file.safetensors"
    assert settings.comfyui_url == "http://127.0.0.1:8188"
    origins = {item.name: item.origin for item in settings.describe()}
    assert origins["base_model"] == "file"
    assert origins["comfyui_url"] == "environment"
    assert origins["device"] == "default"
    assert {item.name: item.origin for item in settings.with_overrides(device="cpu").describe()}[
        "device"
    ] == "override"


def test_read_once_until_the_environment_or_the_file_changes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Settings.current()
    assert Settings.current() is first
    monkeypatch.setenv("LORA_PIPELINE_DEVICE", "cpu")
    second = Settings.current()
    assert second is not first and second.device == "cpu"
    save_settings(home, base_model="/m.safetensors")
    assert Settings.current().base_model == "/m.safetensors"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LORA_PIPELINE_COMFYUI_TIMEOUT", "-1", "greater than 0"),
        ("LORA_PIPELINE_COMFYUI_TIMEOUT", "inf", "finite"),
        ("LORA_PIPELINE_MIN_SIDE", "x", "valid integer"),
        ("LORA_PIPELINE_RESOLUTION_GATE", "maybe", "'warn' or 'block'"),
        ("LORA_PIPELINE_DEVICE", "gpu", "auto, cpu, cuda"),
        ("LORA_PIPELINE_REFERENCE_THRESHOLD", "2", "less than or equal to 1"),
        ("LORA_PIPELINE_PROJECT_IDENTIFIERS", "{not json", "not a JSON object"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(
    home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        Settings.current()
    text = str(error.value)
    assert text.startswith(variable + ":") and message in text and "\n" not in text


def test_structured_values_parse_from_text(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_PIPELINE_TAG_BLACKLIST", "watermark, signature ,")
    monkeypatch.setenv("LORA_PIPELINE_PROJECT_IDENTIFIERS", '{"b": "ollama:x#y", "a": "llava:z"}')
    monkeypatch.setenv("LORA_PIPELINE_RESOLUTION_GATE", "BLOCK")
    settings = Settings.current()
    assert settings.tag_blacklist == ("watermark", "signature")
    assert settings.identifier_for("a") == "llava:z" and settings.identifier_for("c") is None
    assert settings.resolution_gate == "block"
    hash(settings)  # hashable: it keys the model cache


def test_check_reports_one_line_per_problem(home: Path, tmp_path: Path) -> None:
    settings = Settings.from_env(
        tokenizer_dir=tmp_path / "missing", comfyui_url="ftp://x", echo_brain_url="http://ok:1"
    )
    assert settings.check() == [
        f"LORA_PIPELINE_TOKENIZER_DIR: {tmp_path / 'missing'} does not exist",
        "LORA_PIPELINE_COMFYUI_URL: 'ftp://x' is not an http(s) URL",
    ]
    assert Settings.from_env(tokenizer_dir=tmp_path).check() == []


def test_config_command_shows_values_origins_and_hides_secrets(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_REVIEW_TOKEN", "a-very-secret-token-value")
    monkeypatch.setenv("LORA_PIPELINE_DATABASE_URL", "postgresql://lora:hunter2@127.0.0.1/lora")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "a-very-secret-token-value" not in out and "hunter2" not in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert set(rows) == set(config.iter_variables())
    assert rows["LORA_PIPELINE_REVIEW_TOKEN"][-1] == "environment"
    assert rows["LORA_PIPELINE_DEVICE"][1:] == ["auto", "default"]


def test_config_check_exits_2_with_the_problems(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_KOHYA_SCRIPTS_DIR", "/nowhere/sd-scripts")
    assert main(["config", "--check"]) == 2
    err = capsys.readouterr().err
    assert "LORA_PIPELINE_KOHYA_SCRIPTS_DIR: /nowhere/sd-scripts does not exist" in err
    monkeypatch.delenv("LORA_PIPELINE_KOHYA_SCRIPTS_DIR")
    assert main(["config", "--check"]) == 0


def test_a_bad_setting_is_one_line_from_the_cli(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_MIN_SIDE", "many")
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: LORA_PIPELINE_MIN_SIDE:") and "\n" not in err


def test_readme_table_is_the_generated_one() -> None:
    readme = README.read_text(encoding="utf-8")
    assert config.readme_with_table(readme) == readme, (
        "the README's settings table drifted from lora_pipeline/config.py: run "
        "`lora-pipeline config --readme README.md`"
    )
    for variable in config.iter_variables():
        assert f"`{variable}`" in readme


def test_every_setting_has_help_and_one_variable() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no help line"
    variables = list(config.iter_variables())
    assert len(variables) == len(set(variables))


def test_models_resource_fields_are_derived_from_the_settings() -> None:
    fields = set(ModelsResource.model_fields)
    assert {"base_model", "device", "comfyui_url", "face_threshold", "kohya_scripts_dir"} <= fields
    assert not fields & {"home", "database_url", "data_root", "review_token"}
    assert fields <= set(Settings.model_fields)
    resource = ModelsResource(device="cpu", face_threshold=0.25)
    assert resource.settings().device == "cpu" and resource.settings().face_threshold == 0.25


def _reads_environment(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    if isinstance(node, ast.Attribute) and node.attr in ("getenv", "getenvb"):
        return True
    return isinstance(node, ast.ImportFrom) and node.module == "os" and any(
        a.name in ("environ", "getenv") for a in node.names
    )


def test_only_the_settings_module_touches_the_environment() -> None:
    offenders = sorted(
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "config.py" or path.parent != PACKAGE
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _reads_environment(node)
    )
    assert offenders == []


def test_settings_file_is_written_atomically_and_merged(home: Path) -> None:
    save_settings(home, base_model="a")
    save_settings(home, comfyui_url="http://127.0.0.1:1")
    saved = json.loads((home / "settings.json").read_text())
    assert saved == {"base_model": "a", "comfyui_url": "http://127.0.0.1:1"}
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]
    assert env_name("dagster_home") == "DAGSTER_HOME"
