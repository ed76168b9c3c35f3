"""SQLite writers of one process take turns before BEGIN IMMEDIATE (registry/db.py): each
waits on the turn instead of polling in SQLite's busy handler, and every way a transaction
ends gives the turn back (a turn kept would make every later writer wait 30 s)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate, writer_turns
from lora_pipeline.registry.models import Project

WAIT_S = 30


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    path = tmp_path / "registry.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def registry(db_file: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{db_file}")
    yield registry
    registry.dispose()


def test_a_write_holds_the_turn_until_it_commits(registry: Registry, db_file: Path) -> None:
    turns = writer_turns(db_file)
    with registry.session() as session:
        assert not turns.held()  # sessions begin at their first statement
        commands.add_project(session, "one", "One")
        assert turns.held()
    assert not turns.held()


def test_reads_never_take_the_turn(registry: Registry, db_file: Path) -> None:
    with registry.session(readonly=True) as session:
        session.scalar(select(Project.id))
        assert not writer_turns(db_file).held()


def test_the_turn_is_given_back_when_the_block_fails(registry: Registry, db_file: Path) -> None:
    with pytest.raises(RuntimeError), registry.session() as session:
        commands.add_project(session, "dropped", "Dropped")
        raise RuntimeError("boom")
    assert not writer_turns(db_file).held()
    with registry.session() as session:
        commands.add_project(session, "taken", "Taken")
    with pytest.raises(IntegrityError), registry.session() as session:
        session.add(Project(slug="taken", name="Again"))
        session.flush()
    assert not writer_turns(db_file).held()


def test_engines_on_one_file_share_the_turns(db_file: Path) -> None:
    """A second registry on the file (another part of the process) waits for the first
    writer's commit, and then writes."""
    first, second = Registry(f"sqlite:///{db_file}"), Registry(f"sqlite:///{db_file}")
    inside, written = threading.Event(), threading.Event()
    release = threading.Event()

    def hold() -> None:
        with first.session() as session:
            commands.add_project(session, "first", "First")
            inside.set()
            release.wait(WAIT_S)

    def write() -> None:
        with second.session() as session:
            commands.add_project(session, "second", "Second")
        written.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(WAIT_S)
        writer = threading.Thread(target=write)
        writer.start()
        assert not written.wait(0.3)  # waiting for its turn
        release.set()
        writer.join(WAIT_S)
        assert written.is_set()
    finally:
        release.set()
        holder.join(WAIT_S)
    with second.session(readonly=True) as session:
        assert set(session.scalars(select(Project.slug))) == {"first", "second"}
    assert not writer_turns(db_file).held()
    first.dispose()
    second.dispose()
