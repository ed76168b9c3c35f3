"""The CLI: every command, and one readable line with exit 2 for bad input."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.cli import main
from lora_pipeline.config import Settings
from lora_pipeline.generation_settings import MAX_SEED
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import LoraRelease


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


# --- releases and project settings ---------------------------------------------------------------


def registry_of() -> Registry:
    return Registry(Settings.from_env().database_url)


def add_release(n: int, verdict: str | None = None, reasons: tuple[str, ...] = ()) -> int:
    registry = registry_of()
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        release = commands.register_lora_release(
            session, aiko.id, None, f"loras/aiko/v{n}.safetensors", f"{n:064x}", "anime-v3", {}
        )
        if verdict is not None:
            scores = {"identity": 0.42, "lora_effect": 0.01, "gate_reasons": list(reasons)}
            commands.record_eval(
                session, release.id, {}, f"evals/{n}/grid.png", [], scores, verdict
            )
        release_id = release.id
    registry.dispose()
    return release_id


def release_status(release_id: int) -> str:
    registry = registry_of()
    with registry.session() as session:
        status = session.get(LoraRelease, release_id).status
    registry.dispose()
    return status


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_release_list_shows_status_dataset_and_latest_eval(cast: Path, capsys) -> None:
    assert run(capsys, "release", "list")[1] == "no releases yet\n"
    failed = add_release(1, "fail", ("identity 0.42 < 0.5",))
    newer = add_release(2)
    code, out, _ = run(capsys, "release", "list", "--character", "aiko")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "character", "status", "scope", "checkpoint", "created"]
    assert lines[1].split()[:5] == [str(newer), "aiko", "candidate", "project", "anime-v3"]
    assert lines[2].split() == ["dataset", "not", "recorded"]
    assert lines[3].split() == ["eval", "not", "evaluated", "yet"]
    assert lines[4].split()[:2] == [str(failed), "aiko"]
    assert lines[6].split(None, 3) == ["eval", "1", "fail", "identity 0.42, lora_effect 0.01"]
    assert lines[7].strip() == "identity 0.42 < 0.5"
    code, _, err = run(capsys, "release", "list", "--character", "ghost")
    assert code == 2 and "unknown character 'ghost'" in one_error_line(err)


def test_release_approve_activate_deactivate_reject(cast: Path, capsys) -> None:
    first, second = add_release(1, "pass"), add_release(2, "pass")
    code, out, err = run(capsys, "release", "approve", str(first))
    assert code == 0, err
    card = cast / "data" / "loras" / "aiko" / "v1.model-card.md"
    assert out.splitlines() == [f"release {first}: candidate -> approved", f"model card {card}"]
    assert "| Status | approved |" in card.read_text()
    assert run(capsys, "release", "activate", str(first))[0] == 0
    code, out, _ = run(capsys, "release", "activate", str(second))
    assert out.splitlines()[:2] == [
        f"release {second}: candidate -> active",
        f"release {first}: active -> approved",
    ]
    assert "| Status | approved |" in card.read_text()  # the demoted release's card too
    assert [release_status(r) for r in (first, second)] == ["approved", "active"]
    code, out, _ = run(capsys, "release", "deactivate", str(second))
    assert out.startswith(f"release {second}: active -> approved")
    code, out, _ = run(capsys, "release", "reject", str(first))
    assert out.startswith(f"release {first}: approved -> rejected")
    assert [release_status(r) for r in (first, second)] == ["rejected", "approved"]


def test_activating_puts_the_lora_in_comfyuis_loras_folder(
    cast: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    loras = cast / "comfyui" / "models" / "loras"
    monkeypatch.setenv("LORA_PIPELINE_COMFYUI_LORAS_DIR", str(loras))
    release = add_release(1, "pass")
    lora = cast / "data" / "loras" / "aiko" / "v1.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"weights")
    assert run(capsys, "release", "activate", str(release))[0] == 0
    assert (loras / "v1.safetensors").read_bytes() == b"weights"
    lora.unlink()  # gone: the decision stands, the copy is reported
    run(capsys, "release", "deactivate", str(release))
    code, _, err = run(capsys, "release", "activate", str(release))
    assert code == 0 and "was not copied to ComfyUI's loras folder" in err
    assert release_status(release) == "active"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["release", "approve", "1"], "release 1 did not pass the evaluation gate"),
        (["release", "activate", "2"], "release 2 has not been evaluated yet"),
        (["release", "deactivate", "1"], "only a release that is active can be deactivated"),
        (["release", "reject", "99"], "unknown LoRA release 99"),
    ],
)
def test_refused_release_changes_get_one_line_and_change_nothing(
    cast: Path, capsys, argv: list[str], message: str
) -> None:
    add_release(1, "fail", ("identity 0.42 < 0.5",))
    add_release(2)
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in one_error_line(err)
    assert [release_status(r) for r in (1, 2)] == ["candidate", "candidate"]


def test_project_set_show_and_unset(cast: Path, capsys) -> None:
    code, out, err = run(
        capsys,
        "project",
        "set",
        "demo",
        "--eval-prompt",
        "portrait, looking at viewer",
        "--eval-prompt",
        "full body, running",
        "--eval-seed",
        "7",
        "--eval-seed",
        "8",
        "--min-identity",
        "0.55",
        "--licence",
        "CC-BY-4.0",
        "--source-url",
        "https://example.invalid/show",
    )
    assert code == 0, err
    assert out.splitlines()[0] == (
        "project demo: set eval_prompts, eval_seeds, min_identity, licence, source_url"
    )
    code, out, _ = run(capsys, "project", "show", "demo")
    shown = [line.split(None, 1) for line in out.splitlines()]
    assert shown[0] == ["project", "demo: Demo"]
    assert ["eval_prompts", "2 prompt(s)"] in shown
    assert ["1.", "portrait, looking at viewer"] in shown and ["2.", "full body, running"] in shown
    assert ["eval_seeds", "7, 8"] in shown and ["min_identity", "0.55"] in shown
    assert ["min_clip_score", "(default)"] in shown and ["licence", "CC-BY-4.0"] in shown
    code, out, _ = run(
        capsys, "project", "set", "demo", "--unset", "min-identity", "--unset", "eval-seed"
    )
    assert out.splitlines()[0] == "project demo: unset min_identity, eval_seeds"
    registry = registry_of()
    with registry.session() as session:
        settings = commands.get_project(session, "demo").settings
    registry.dispose()
    assert settings == {
        "eval_prompts": ["portrait, looking at viewer", "full body, running"],
        "licence": "CC-BY-4.0",
        "source_url": "https://example.invalid/show",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--min-identity", "high"], "--min-identity must be a number, got 'high'"),
        (["--min-identity", "1.5"], "min_identity must be a number from -1 to 1, got 1.5"),
        (["--min-quality", "nan"], "--min-quality must be a finite number"),
        (["--eval-seed", "1.5"], "--eval-seed must be a whole number between 0 and"),
        (["--eval-seed", "-3"], "--eval-seed must be between 0 and"),
        (["--unset", "colour"], "unknown project setting 'colour'"),
        (["--licence", "MIT", "--unset", "licence"], "--licence and --unset licence contradict"),
        ([], "nothing to change"),
    ],
)
def test_project_set_refuses_bad_values_with_one_line(
    cast: Path, capsys, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "project", "set", "demo", *argv)
    assert code == 2 and message in one_error_line(err)
    # Nothing was set: every setting still shows its default.
    shown = run(capsys, "project", "show", "demo")[1]
    assert shown.count("(default)") == len(commands.PROJECT_SETTINGS)


@pytest.mark.parametrize(
    ("option", "accepted", "refused"),
    [
        ("--seed", str(MAX_SEED), str(MAX_SEED + 1)),
        ("--seed", "0", "-1"),
        ("--steps", "10000", "10001"),
        ("--cfg", "100", "100.5"),
        ("--width", "16384", "16392"),
        ("--height", "16", "8"),
    ],
)
def test_character_settings_typed_on_the_command_line_have_the_shared_limits(
    cast: Path, capsys, option: str, accepted: str, refused: str
) -> None:
    code, _, err = run(capsys, "character", "add", "mio", "--project", "demo", option, refused)
    assert code == 2 and f"{option} must be between" in one_error_line(err)
    assert run(capsys, "character", "add", "mio", "--project", "demo", option, accepted)[0] == 0


def test_ids_typed_on_the_command_line_use_the_shared_parser(cast: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["review", "approve", "0"])
    assert "image id must be between 1 and" in capsys.readouterr().err


def test_project_show_of_an_unknown_project(cast: Path, capsys) -> None:
    code, _, err = run(capsys, "project", "show", "nope")
    assert code == 2 and "unknown project 'nope'" in one_error_line(err)


def test_release_approve_of_an_unverified_eval_needs_override(cast: Path, capsys) -> None:
    release = add_release(1, "unverified", ("identity and clip_score not measured",))
    code, _, err = run(capsys, "release", "approve", str(release))
    assert code == 2 and "needs an explicit override" in one_error_line(err)
    assert release_status(release) == "candidate"
    code, out, err = run(
        capsys, "release", "approve", str(release), "--override", "eyeballed", "--reviewer", "mika"
    )
    assert code == 0, err
    assert release_status(release) == "approved"
    card = cast / "data" / "loras" / "aiko" / "v1.model-card.md"
    assert "**Gate overridden** by mika on " in card.read_text()


def test_release_approve_in_a_project_requiring_a_licence(cast: Path, capsys) -> None:
    code, out, _ = run(capsys, "project", "set", "demo", "--require-licence")
    assert code == 0 and "require_licence  True" in out
    release = add_release(1, "pass")
    code, _, err = run(capsys, "release", "approve", str(release))
    assert code == 2 and "project 'demo' requires a licence" in one_error_line(err)
    assert release_status(release) == "candidate"
    code, _, err = run(capsys, "release", "approve", str(release), "--licence", "CC-BY-4.0")
    assert code == 0, err
    assert release_status(release) == "approved"
    card = cast / "data" / "loras" / "aiko" / "v1.model-card.md"
    assert "| Licence | CC-BY-4.0 |" in card.read_text()
    code, out, _ = run(capsys, "project", "set", "demo", "--unset", "require-licence")
    assert code == 0 and "require_licence  (default)" in out
