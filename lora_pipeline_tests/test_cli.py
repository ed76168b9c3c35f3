"""The CLI: every command, and one readable line with exit 2 for bad input."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cast(project_home: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, "init")[0] == 0
    assert run(capsys, "project", "add", "demo", "--name", "Demo")[0] == 0
    code, out, _ = run(
        capsys,
        "character",
        "add",
        "aiko",
        "--project",
        "demo",
        "--design-prompt",
        "teal hair",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
    )
    assert code == 0 and "trigger word aiko" in out
    return project_home


def test_init_creates_registry_and_dagster_home(cast: Path) -> None:
    assert (cast / "registry.db").is_file()
    assert (cast / "dagster_home" / "dagster.yaml").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["character", "add", "../etc", "--project", "demo"], "slug"),
        (["character", "add", "mio", "--project", "nope"], "nope"),
        (["project", "add", "demo"], "demo"),
        (["review", "approve", "999"], "999"),
        (["ingest", "/no/such/file.mp4", "--character", "aiko"], "no such file"),
        (["ingest", "https://example.invalid/v", "--character", "ghost"], "ghost"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(
    cast: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_corrupt_upload_is_refused(cast: Path, capsys, tmp_path: Path) -> None:
    bad = tmp_path / "frame.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    code, _, err = run(capsys, "ingest", str(bad), "--character", "aiko")
    assert code == 2 and "frame.png" in err


def test_unreachable_url_fails_the_source_with_a_reason(cast: Path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip.mp4"
    code, out, err = run(capsys, "ingest", url, "--character", "aiko", "--now")
    assert code == 2
    assert "ingest request 1 created" in out
    assert err.startswith("error: ingest 1 failed:") and err.count("\n") == 1


def test_ingest_review_and_status(cast: Path, capsys, tmp_path: Path) -> None:
    picture = tmp_path / "ref.jpg"
    Image.new("RGB", (80, 96), (10, 200, 30)).save(picture)
    code, out, _ = run(capsys, "ingest", str(picture), "--character", "aiko", "--now")
    assert code == 0, out
    code, out, _ = run(capsys, "review", "list", "--character", "aiko")
    (line,) = out.strip().splitlines()
    image_id = line.split()[0]
    code, out, err = run(
        capsys,
        "review",
        "reject",
        image_id,
        "--category",
        "wrong-style",
        "--category",
        "bad-quality",
        "--notes",
        "off model",
    )
    assert code == 0, err
    assert "wrong art style, blurry, low quality" in out
    code, _, err = run(capsys, "review", "approve", image_id)
    assert code == 2 and "already rejected" in err
    code, out, _ = run(capsys, "status")
    row = next(line for line in out.splitlines() if line.startswith("aiko"))
    assert row.split()[2:6] == ["0", "0", "1", "0"]


def test_console_script_prints_no_traceback(cast: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lora_pipeline.cli", "review", "approve", "12345"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
