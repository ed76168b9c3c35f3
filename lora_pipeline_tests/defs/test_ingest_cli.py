"""`lora-pipeline ingest`: URLs and files as before, and a scan of the ComfyUI output folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.cli import main
from lora_pipeline_tests.media.test_comfyui_outputs import _graph, write_output


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    for name in ("DATABASE_URL", "DATA_ROOT", "IDENTIFIER", "COMFYUI_OUTPUT_DIR", "BASE_MODEL"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    assert run(capsys, "init")[0] == 0
    assert run(capsys, "project", "add", "demo")[0] == 0
    assert run(capsys, "character", "add", "aiko", "--project", "demo")[0] == 0
    return home


def test_scan_comfyui_output_now(cast: Path, capsys, tmp_path: Path) -> None:
    folder = tmp_path / "output"
    write_output(folder, "aiko_00001_.png", _graph())
    code, out, err = run(capsys, "ingest", "--comfyui-output", "--folder", str(folder), "--now")
    assert code == 0, err
    assert "1 new ComfyUI outputs to ingest" in out
    assert "ingest 1: done" in out
    code, out, _ = run(capsys, "review", "list", "--character", "aiko")
    assert "seed 43" in out
    # Scanning again finds nothing new.
    code, out, _ = run(capsys, "ingest", "--comfyui-output", "--folder", str(folder))
    assert code == 0 and "0 new ComfyUI outputs" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "--comfyui-output"], "LORA_PIPELINE_COMFYUI_OUTPUT_DIR"),
        (["ingest", "https://example.invalid/v"], "--character or --project"),
        (["ingest", "--character", "aiko"], "give a URL or file"),
    ],
)
def test_bad_ingest_arguments(cast: Path, capsys, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and message in err
