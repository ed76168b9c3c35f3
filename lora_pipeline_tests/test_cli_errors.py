"""The CLI's last word on an error: a full disk anywhere is one line and exit 2 (the same words
as the review app's 507 and a failed source's reason), and any other unexpected exception is
one line with an error id, exit 1, and its traceback in `<home>/logs/cli.log` under that id."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from pathlib import Path

import pytest

from lora_pipeline import config
from lora_pipeline.cli import home as home_commands
from lora_pipeline.cli import main
from lora_pipeline.errors import DISK_FULL, disk_full, disk_message
from lora_pipeline.media.uploads import UploadError


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    for name in ("DATABASE_URL", "DATA_ROOT", "BASE_MODEL"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    return home


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_anywhere_in_a_command_is_one_line_and_exit_2(
    cli_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise _enospc()

    # Writing settings.json: a raw OSError that no domain error wraps.
    monkeypatch.setattr(config, "atomic_write_text", full)
    assert main(["init"]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {DISK_FULL}\n" and "Traceback" not in out + err
    assert not (cli_home / "logs" / "cli.log").exists()  # not a bug: nothing to look up


def test_an_unexpected_error_is_one_line_with_an_id_found_in_the_log(
    cli_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["init"]) == 0
    capsys.readouterr()

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("the registry caught fire")

    monkeypatch.setattr(home_commands.queries, "list_characters", broken)
    assert main(["status"]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: unexpected KeyError")
    assert "Traceback" not in out + err
    (error_id,) = re.findall(r"error ([0-9a-f]{12});", err)
    log = (cli_home / "logs" / "cli.log").read_text()
    entry = log[log.index(f"error {error_id} on lora-pipeline status") :]
    assert "Traceback (most recent call last)" in entry and "the registry caught fire" in entry


def test_disk_full_finds_a_full_disk_under_what_wrapped_it() -> None:
    try:
        try:
            raise _enospc()
        except OSError as exc:
            raise UploadError(f"clip.mp4: {disk_message(exc)}") from exc
    except UploadError as wrapped:
        assert disk_full(wrapped) and str(wrapped) == f"clip.mp4: {DISK_FULL}"
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert disk_full(quota) and disk_message(quota) == DISK_FULL
    assert not disk_full(PermissionError(errno.EACCES, "Permission denied"))
    assert disk_message(PermissionError(errno.EACCES, "Permission denied")) == "Permission denied"
    # SQLite's own "database or disk is full", from a database capped at a few pages.
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (data BLOB)")
    connection.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.OperationalError) as raised:
        connection.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert disk_full(raised.value)
    assert not disk_full(sqlite3.OperationalError("no such table: t"))
