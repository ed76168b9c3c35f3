"""Publishing files and folders atomically: the whole new one or the old one, never half, and
no temporary left behind whatever happens."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lora_pipeline.files import atomic_folder, atomic_path, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_is_replaced_whole_and_readable(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert _leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_writers_never_share_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    names: list[str] = []

    def write(text: str) -> None:
        with atomic_path(target) as temporary:
            names.append(temporary.name)
            temporary.write_text(text * 1000)

    threads = [threading.Thread(target=write, args=(str(i),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 8
    assert len(set(target.read_text())) == 1  # one writer's whole text
    assert _leftovers(tmp_path) == []


def test_a_folder_is_swapped_in_whole(tmp_path: Path) -> None:
    target = tmp_path / "version"
    with atomic_folder(target) as scratch:
        (scratch / "one").write_text("1")
    with atomic_folder(target) as scratch:
        (scratch / "two").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["two"]
    assert _leftovers(tmp_path) == []


def test_a_failed_folder_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "version"
    with atomic_folder(target) as scratch:
        (scratch / "one").write_text("1")
    with pytest.raises(OSError), atomic_folder(target) as scratch:
        (scratch / "half").write_text("h")
        raise OSError(28, "No space left on device")
    assert sorted(p.name for p in target.iterdir()) == ["one"]
    assert _leftovers(tmp_path) == []


def test_publish_once_keeps_the_first_writers_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()  # an empty folder is not a published one
    with atomic_folder(target, replace=False) as scratch:
        (scratch / "first").write_text("1")
    with atomic_folder(target, replace=False) as scratch:
        (scratch / "second").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["first"]
    assert _leftovers(tmp_path) == []
