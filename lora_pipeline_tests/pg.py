"""A throw-away PostgreSQL database for tests, on the server at 127.0.0.1:5432.

Any test package can use it:

    with postgres_database_url() as url:   # "postgresql://postgres@127.0.0.1:5432/lp_test_…"
        ...

When the server cannot be reached the calling test is skipped, unless
LORA_PIPELINE_REQUIRE_POSTGRES=1 (CI), where it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

PG_HOST = os.environ.get("LORA_PIPELINE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("LORA_PIPELINE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("LORA_PIPELINE_TEST_PG_USER", "postgres")
# Databases to connect to for CREATE/DROP DATABASE, in order of preference.
PG_ADMIN_DATABASES = ("test", "postgres")
REQUIRE_ENV = "LORA_PIPELINE_REQUIRE_POSTGRES"


def _admin_connection() -> Any:
    """An autocommit connection for CREATE/DROP DATABASE; skips or fails if unreachable."""
    import psycopg2

    errors: list[str] = []
    for database in PG_ADMIN_DATABASES:
        try:
            connection = psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, connect_timeout=5
            )
        except psycopg2.OperationalError as error:
            errors.append(f"{database}: {str(error).strip().splitlines()[0]}")
            continue
        connection.autocommit = True
        return connection
    message = (
        f"PostgreSQL is not reachable at {PG_USER}@{PG_HOST}:{PG_PORT} ({'; '.join(errors)}); "
        "start it with `pg_ctlcluster <version> main start`"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def database_url(name: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@contextmanager
def postgres_database_url(prefix: str = "lp_test") -> Iterator[str]:
    """Create a uniquely named empty database, yield its URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _admin_connection()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield database_url(name)
    finally:
        with admin.cursor() as cursor:
            # FORCE: a test that failed half-way may have left connections open.
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def reset_schema(url: str) -> None:
    """Empty a test database: drop every table, sequence and type of the public schema."""
    import psycopg2

    name = url.rsplit("/", 1)[1]
    connection = psycopg2.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name, connect_timeout=5
    )
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        connection.close()
