"""A batch approve decides each id on its own: the good ones are approved, each bad one is
reported in one line (from the CLI, `review approve A B C`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from lora_pipeline import actions
from lora_pipeline.config import Settings
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import ConflictError, NotFoundError
from lora_pipeline.registry.models import Image
from lora_pipeline_tests.review.conftest import add_cast


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """The registry of a project home the CLI finds through LORA_PIPELINE_HOME."""
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("DATABASE_URL", "DATA_ROOT"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    current = Settings.current()
    current.ensure_dirs()
    migrate(current.database_url)
    registry = Registry(current.database_url)
    add_cast(registry)
    yield registry
    registry.dispose()


def add_images(registry: Registry, count: int) -> list[int]:
    root = DataRoot(Settings.current().data_root)
    ids = []
    for n in range(count):
        stored = root.put_image(PILImage.new("RGB", (16, 16), (n, 80, 160)))
        with registry.session() as session:
            aiko = commands.get_character(session, "aiko")
            image, _ = commands.add_image(
                session, aiko.id, stored.sha256, stored.relpath, 16, 16, "generated"
            )
            ids.append(image.id)
    return ids


def statuses(registry: Registry, ids: list[int]) -> list[str]:
    with registry.session() as session:
        return [session.get(Image, i).status for i in ids]


def test_the_good_ids_are_approved_and_each_bad_one_is_returned(registry: Registry) -> None:
    first, decided, last = add_images(registry, 3)
    with registry.session() as session:
        commands.reject_image(session, decided, ["bad_quality"], reviewer="bob")
    refused = actions.approve_images(registry, [first, decided, 999, last, first], "alice")
    assert list(refused) == [decided, 999]
    assert isinstance(refused[decided], ConflictError)
    assert "already rejected by bob" in str(refused[decided])
    assert isinstance(refused[999], NotFoundError)
    assert statuses(registry, [first, decided, last]) == ["approved", "rejected", "approved"]


def test_cli_reports_each_bad_id_in_one_line(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    from lora_pipeline.cli import main

    first, decided, last = add_images(registry, 3)
    with registry.session() as session:
        commands.reject_image(session, decided, ["bad_quality"], reviewer="bob")
    code = main(["review", "approve", str(first), str(decided), "999", str(last)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == f"approved {first}, {last}\n"
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert f"image {decided}" in lines[0] and "already rejected" in lines[0]
    assert "999" in lines[1] and "Traceback" not in err
    assert statuses(registry, [first, decided, last]) == ["approved", "rejected", "approved"]


def test_cli_all_good_ids(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    from lora_pipeline.cli import main

    ids = add_images(registry, 2)
    assert main(["review", "approve", *map(str, ids)]) == 0
    assert capsys.readouterr() == (f"approved {ids[0]}, {ids[1]}\n", "")
    assert statuses(registry, ids) == ["approved", "approved"]
