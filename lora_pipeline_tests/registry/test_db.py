"""Engines, migrations and sessions on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from lora_pipeline.config import Settings
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import (
    Registry,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    normalize_url,
)
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.registry.models import Base, Project

EXPECTED_TABLES = {
    "projects",
    "characters",
    "models",
    "generation_profiles",
    "sources",
    "frames",
    "images",
    "feedback",
    "generation_jobs",
    "dataset_versions",
    "lora_releases",
    "evals",
    "prompt_suggestions",
    "comfyui_output_files",
    "candidate_clusters",
    "unrecognised_crops",
}
# The newest migration shipped with the package.
HEAD = "0009"


def schema_diff(url: str, metadata: MetaData) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_migrate_to_head_matches_models(registry_url: str) -> None:
    assert current_revision(registry_url) is None
    head = migrate(registry_url)
    assert head == head_revision() == HEAD
    assert current_revision(registry_url) == head
    engine = make_engine(registry_url)
    try:
        assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES | {"alembic_version"}
    finally:
        engine.dispose()
    assert schema_diff(registry_url, Base.metadata) == []


def test_schema_comparison_sees_a_missing_table(registry_url: str) -> None:
    # The check above would be worthless if compare_metadata could not see differences.
    migrate(registry_url)
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    Table("not_migrated", metadata, Column("id", Integer, primary_key=True))
    diff = schema_diff(registry_url, metadata)
    assert [d[0] for d in diff] == ["add_table"]  # type: ignore[index]


def test_migrate_twice_is_a_no_op(registry_url: str) -> None:
    migrate(registry_url)
    registry = Registry(registry_url)
    try:
        with registry.session() as session:
            commands.add_project(session, "show", "The Show")
        assert migrate(registry_url) == HEAD
        with registry.session() as session:
            assert session.scalar(select(Project.slug)) == "show"
        assert registry.is_current()
    finally:
        registry.dispose()


def test_concurrent_migrations_in_threads_both_succeed(registry_url: str) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(registry_url))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [HEAD, HEAD]
    assert current_revision(registry_url) == HEAD


def _migrate_in_child(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        results.put(migrate(url))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        results.put(f"error: {error!r}")


def test_concurrent_migrations_in_processes_all_succeed(registry_url: str) -> None:
    # Processes starting at once (code server, review app, run workers) on an empty database;
    # four rather than two make an overlap of their first connections far more likely.
    process_count = 4
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(process_count), context.Queue()
    children = [
        context.Process(target=_migrate_in_child, args=(registry_url, barrier, results))
        for _ in range(process_count)
    ]
    for child in children:
        child.start()
    outcomes = sorted(results.get(timeout=120) for _ in children)
    for child in children:
        child.join()
    assert outcomes == [HEAD] * process_count
    assert schema_diff(registry_url, Base.metadata) == []


def _hold_write_lock(db_file: str, locked: Any, hold_s: float) -> None:
    # In rollback-journal mode BEGIN IMMEDIATE takes the RESERVED lock: the state of a
    # connection that is writing the WAL header of a new file.
    connection = sqlite3.connect(db_file, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(hold_s)
    connection.execute("COMMIT")
    connection.close()


def test_sqlite_wal_switch_of_a_new_file_waits_for_another_writer(tmp_path: Path) -> None:
    # The WAL switch of an empty file upgrades a read lock to a write lock, and SQLite calls no
    # busy handler for that: without a retry the connection failed at once ("database is
    # locked"), which is how two processes migrating a new database at once could fail.
    db_file = tmp_path / "registry.db"
    context = multiprocessing.get_context("fork")
    locked = context.Event()
    holder = context.Process(target=_hold_write_lock, args=(str(db_file), locked, 1.0))
    holder.start()
    try:
        assert locked.wait(timeout=60)
        engine = make_engine(f"sqlite:///{db_file}")
        try:
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            engine.dispose()
    finally:
        holder.join()
    assert holder.exitcode == 0


def test_downgrade_to_base_removes_every_table(registry_url: str) -> None:
    from alembic import command

    migrate(registry_url)
    command.downgrade(alembic_config(registry_url), "base")
    engine = make_engine(registry_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert current_revision(registry_url) is None


def test_sqlite_engine_settings_and_parent_directory(tmp_path: Path) -> None:
    db_file = tmp_path / "deep" / "er" / "registry.db"
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()
    assert db_file.exists()


def test_current_revision_does_not_create_a_sqlite_file(tmp_path: Path) -> None:
    db_file = tmp_path / "missing" / "registry.db"
    assert current_revision(f"sqlite:///{db_file}") is None
    assert not db_file.exists()


def test_urls_are_normalised_for_psycopg2() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg2"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg2"
    assert normalize_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(InvalidInputError, match="unsupported database 'mysql'"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(InvalidInputError, match="invalid database URL"):
        normalize_url("not a url")


def test_alembic_config_escapes_percent_in_passwords() -> None:
    config = alembic_config("postgresql://user:p%25ss@host/db")
    assert config.get_main_option("sqlalchemy.url") == "postgresql+psycopg2://user:p%25ss@host/db"
    assert Path(config.get_main_option("script_location") or "").joinpath("env.py").exists()


def test_session_commits_on_success_and_rolls_back_on_error(registry: Registry) -> None:
    with registry.session() as session:
        project = commands.add_project(session, "kept", "Kept")
    assert project.slug == "kept"  # expire_on_commit=False: usable after the block
    with pytest.raises(RuntimeError), registry.session() as session:
        commands.add_project(session, "dropped", "Dropped")
        raise RuntimeError("boom")
    with registry.session() as session:
        assert list(session.scalars(select(Project.slug))) == ["kept"]


def test_readonly_session_never_commits(registry: Registry) -> None:
    with registry.session(readonly=True) as session:
        assert session.scalar(select(Project.id)) is None
    if registry.engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="read-only transaction"):  # noqa: SIM117
            with registry.session(readonly=True) as session:
                commands.add_project(session, "nope", "Nope")
    else:
        with registry.session(readonly=True) as session:
            commands.add_project(session, "nope", "Nope")
    with registry.session() as session:
        assert session.scalar(select(Project.id)) is None


def test_foreign_keys_are_enforced(registry: Registry) -> None:
    with pytest.raises(IntegrityError), registry.session() as session:
        session.execute(
            text(
                "INSERT INTO characters (project_id, slug, name, trigger_word, design_prompt, "
                "negative_prompt, cfg, steps, sampler, scheduler, width, height, created_at, "
                "updated_at) VALUES (999, 'x', 'X', 'xx', '', '', 7, 25, 'euler', 'normal', "
                "512, 512, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )


def test_registry_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.db'}", data_root=tmp_path / "d"
    )
    registry = Registry.from_settings(settings)
    try:
        assert registry.url == f"sqlite:///{tmp_path / 'r.db'}"
        assert not registry.is_current()
        registry.migrate()
        assert registry.is_current()
    finally:
        registry.dispose()


def test_registry_repr_hides_the_password() -> None:
    registry = Registry("postgresql://user:secret@127.0.0.1:1/db")
    try:
        assert "secret" not in repr(registry)
        assert registry.url.startswith("postgresql+psycopg2://")
    finally:
        registry.dispose()


def test_offline_sql_script_for_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    # `alembic upgrade --sql` for a DBA who applies migrations by hand.
    from alembic import command

    command.upgrade(alembic_config("postgresql://u@h/db"), "head", sql=True)
    script = capsys.readouterr().out
    assert "CREATE TABLE images (" in script
    assert "CREATE UNIQUE INDEX uq_lora_releases_one_active ON lora_releases (character_id) " in (
        script
    )
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in script
