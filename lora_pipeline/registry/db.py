"""Engines, sessions and migrations of the registry, on SQLite and PostgreSQL.

SQLite notes (why the hooks below exist):
- pysqlite's legacy transaction handling emits no BEGIN before SELECT, DDL or SAVEPOINT, which
  breaks savepoints and transactional migrations; SQLAlchemy's documented remedy is to turn it
  off and emit BEGIN ourselves.
- Write sessions start with BEGIN IMMEDIATE: with WAL, a deferred transaction that read first and
  writes later fails at once with "database is locked" when another writer committed meanwhile,
  whereas an immediate one waits (busy_timeout) for its turn. Read-only sessions use a plain
  BEGIN so that they never wait for writers.
- Switching a brand-new (empty) file to WAL writes the file header from inside the pragma's read
  transaction; SQLite never calls the busy handler for such a read-to-write upgrade (it could
  deadlock), so a second connection doing the same at that moment fails at once with "database
  is locked" whatever busy_timeout says. The switch is therefore retried up to that timeout.
- The writers of one process take turns on a lock of their own before BEGIN IMMEDIATE (see
  `WriterTurns`): SQLite's busy handler polls with sleeps growing to 100 ms, so under 20
  concurrent reviewers a waiting writer slept on while the database was free (p95 several
  times one write). Other processes still wait through busy_timeout.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from lora_pipeline.registry.errors import InvalidInputError

if TYPE_CHECKING:
    from lora_pipeline.config import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections each engine keeps open: the review app serves 20 concurrent reviewers from a
# thread pool of 40, and a connection over the pool's size is closed when it is returned, so a
# smaller pool opened (PostgreSQL: a server process) and closed a connection per request.
POOL_SIZE = 20
POOL_OVERFLOW = 20
# Pause between attempts to switch a new SQLite file to WAL (see the module docstring).
WAL_SWITCH_RETRY_S = 0.01
# Execution option that marks a read-only transaction (see the module docstring).
READONLY_OPTION = "lora_pipeline_readonly"
# Key of the PostgreSQL advisory lock held while migrating: two processes starting at once
# (the code server and the review app) must not both create the tables.
MIGRATION_LOCK_KEY = 0x6C6F7261  # "lora"
# Alembic keeps its running context in module globals (alembic.context, alembic.op), so two
# threads of one process must not migrate at the same time.
_MIGRATE_THREAD_LOCK = threading.Lock()


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain postgresql:// URLs get the installed psycopg2 driver.

    SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, which is not a dependency here.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise InvalidInputError(f"invalid database URL {url!r}: {error}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInputError(
            f"unsupported database {parsed.get_backend_name()!r} in URL: use sqlite:/// or "
            "postgresql://"
        )
    return parsed


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        database = database.removeprefix("file:").split("?", 1)[0]
    return Path(database).expanduser()


def make_engine(url: str, *, sqlite_foreign_keys: bool = True) -> Engine:
    """An engine for `url` with the registry's connection settings.

    `sqlite_foreign_keys=False` is for migrations only: SQLite rebuilds tables to alter them,
    which foreign key enforcement would break; the migration checks the keys afterwards.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        db_file = _sqlite_file(parsed)
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        # The driver's own timeout also covers the dialect's first queries, which run before
        # the connect hook below sets busy_timeout.
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "factory": TurnTakingConnection}
        # An in-memory database lives in one connection per thread: no pool to size.
        pool = {} if db_file is None else {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
        engine = create_engine(parsed, connect_args=connect_args, **pool)
        _install_sqlite_hooks(engine, foreign_keys=sqlite_foreign_keys, turns=writer_turns(db_file))
    else:
        # pre_ping: long-lived processes (sensors, the review app) survive a server restart.
        engine = create_engine(
            parsed, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW
        )
        _install_postgresql_hooks(engine)
    return engine


class WriterTurns:
    """The turns of one process's writers on one SQLite database.

    A writer takes its turn before BEGIN IMMEDIATE and gives it back once its COMMIT or
    ROLLBACK has run (the connection below), so the next one starts at once instead of
    sleeping in SQLite's busy handler. It waits at most busy_timeout for its turn and then
    goes on without one: SQLite itself still decides, so nothing waits longer than before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def take(self) -> bool:
        return self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)

    def give_back(self) -> None:
        self._lock.release()

    def held(self) -> bool:
        """Whether a writer has the turn now."""
        return self._lock.locked()

    def forget(self) -> None:
        """A fresh turn: a forked child has none of its parent's writers."""
        self._lock = threading.Lock()


_TURNS: dict[str, WriterTurns] = {}
_TURNS_LOCK = threading.Lock()


def _forget_turns_in_child() -> None:
    # A fork while a thread was writing would leave the child's turn taken for good.
    global _TURNS_LOCK
    _TURNS_LOCK = threading.Lock()
    for turns in _TURNS.values():
        turns.forget()


os.register_at_fork(after_in_child=_forget_turns_in_child)


def writer_turns(db_file: Path | None) -> WriterTurns:
    """The turns of `db_file`, shared by every engine of this process on it; an in-memory
    database is one connection's own."""
    if db_file is None:
        return WriterTurns()
    key = str(db_file.resolve())
    with _TURNS_LOCK:
        return _TURNS.setdefault(key, WriterTurns())


class TurnTakingConnection(sqlite3.Connection):
    """A sqlite3 connection that gives back its writer's turn when its transaction ends."""

    turn: WriterTurns | None = None

    def hold(self, turn: WriterTurns) -> None:
        self.turn = turn

    def end_turn(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.give_back()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.end_turn()


def _install_sqlite_hooks(engine: Engine, *, foreign_keys: bool, turns: WriterTurns) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(READONLY_OPTION, False):
            connection.exec_driver_sql("BEGIN")
            return
        dbapi_connection = connection.connection.dbapi_connection
        taking = isinstance(dbapi_connection, TurnTakingConnection)
        # A turn still held (its transaction ended by SQL, not by commit()) is kept, not taken
        # twice: taking it again would wait for itself.
        if taking and dbapi_connection.turn is None and turns.take():
            dbapi_connection.hold(turns)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if taking:
                dbapi_connection.end_turn()
            raise


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the write lock.

    See the module docstring: on a new file the pragma fails with SQLITE_BUSY without waiting.
    Once the file is in WAL mode the pragma only reads, so the retries end as soon as the other
    connection has written the header.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            busy = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(WAL_SWITCH_RETRY_S)


def _install_postgresql_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(READONLY_OPTION, False):
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")


# --- migrations -------------------------------------------------------------------------------


def alembic_config(url: str) -> Config:
    """An Alembic configuration built in code: no alembic.ini is needed at run time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolates '%', which a URL-encoded password may contain.
    rendered = normalize_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision shipped with the package."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def migrate(url: str) -> str:
    """Upgrade the database at `url` to the newest schema; returns the head revision.

    Safe to call at every start: an up-to-date database is left as it is, and concurrent
    callers are serialised (advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite).
    """
    config = alembic_config(url)
    engine = make_engine(url, sqlite_foreign_keys=False)
    try:
        with _MIGRATE_THREAD_LOCK, engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    return head_revision()


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None when it was never migrated."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        db_file = _sqlite_file(parsed)
        if db_file is not None and not db_file.exists():
            return None  # do not create an empty file just to look at it
    engine = make_engine(url)
    try:
        with engine.connect().execution_options(**{READONLY_OPTION: True}) as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


# --- sessions ---------------------------------------------------------------------------------


class Registry:
    """The registry database: an engine and transactional sessions on it."""

    def __init__(self, url: str) -> None:
        self.url: str = normalize_url(url).render_as_string(hide_password=False)
        self.engine: Engine = make_engine(self.url)
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        readonly_engine = self.engine.execution_options(**{READONLY_OPTION: True})
        self._readonly_sessions = sessionmaker(bind=readonly_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(settings.database_url)

    def __repr__(self) -> str:
        return f"Registry({make_url(self.url).render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A session whose work is committed when the block succeeds, rolled back otherwise.

        `readonly=True` is for queries only (sensors, pages): it never waits for writers on
        SQLite, PostgreSQL refuses writes in it, and nothing is committed.
        """
        factory = self._readonly_sessions if readonly else self._sessions
        with factory() as session:
            try:
                yield session
                if readonly:
                    session.rollback()
                else:
                    session.commit()
            except BaseException:
                session.rollback()
                raise

    def migrate(self) -> str:
        """Upgrade this registry's database to the newest schema (see `migrate`)."""
        return migrate(self.url)

    def current_revision(self) -> str | None:
        return current_revision(self.url)

    def is_current(self) -> bool:
        """Whether the database is at the newest schema shipped with the package."""
        return self.current_revision() == head_revision()

    def dispose(self) -> None:
        """Close the pooled connections (end of a test, or of a worker process)."""
        self.engine.dispose()
