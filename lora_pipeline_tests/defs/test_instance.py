"""The Dagster instance files the project ships: SQLite by default, PostgreSQL documented."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lora_pipeline.defs.instance import open_instance, prepare_dagster_home
from lora_pipeline_tests import pg

REPO = Path(__file__).resolve().parents[2]


def test_sqlite_home_limits_the_gpu_pool(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    prepare_dagster_home(home)
    with open_instance(home) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        for pool in ("gpu", "gpu_interactive"):
            assert instance.event_log_storage.get_concurrency_info(pool).slot_count == 1
        assert "sqlite" in type(instance.run_storage).__name__.lower()


def test_postgres_variant_opens_with_psycopg2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg.postgres_database_url("lp_dagster") as url:
        monkeypatch.setenv("DAGSTER_PG_USERNAME", pg.PG_USER)
        monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
        monkeypatch.setenv("DAGSTER_PG_HOST", pg.PG_HOST)
        monkeypatch.setenv("DAGSTER_PG_DB", url.rsplit("/", 1)[1])
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copyfile(REPO / "dagster-postgres.yaml", home / "dagster.yaml")
        prepare_dagster_home(home)
        with open_instance(home) as instance:
            assert "postgres" in type(instance.run_storage).__name__.lower()
            assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
            instance.add_dynamic_partitions("character", ["aiko"])
            assert instance.get_dynamic_partitions("character") == ["aiko"]
            instance.dispose()
