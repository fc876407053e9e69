"""Engines, transactions and the schema revision check.

SQLite is opened in WAL mode with foreign keys on and a busy timeout; write
transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the
database lock (for up to the busy timeout) instead of failing half-way through
a transaction. Reads use a plain deferred ``BEGIN`` and never block writers.

The schema is owned by alembic: ``alembic/`` at the repository root, which an installed
package carries as ``store/migrations`` (see pyproject.toml); the helpers here are what
``cmem db upgrade`` and ``TaskStore`` call.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
)

from store.errors import DatabaseAccessError, SchemaVersionError

if TYPE_CHECKING:  # alembic is imported only to migrate or to explain a mismatch (it is slow to import)
    from alembic.config import Config
    from alembic.script import ScriptDirectory


def _migrations_dir() -> Path:
    """Where the migrations are: ``store/migrations`` installed (a wheel), ``alembic/`` in a checkout."""
    here = Path(__file__).resolve().parent
    installed, checkout = here / "migrations", here.parent / "alembic"
    return installed if (installed / "env.py").is_file() else checkout


ALEMBIC_DIR = _migrations_dir()
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Execution option that makes a SQLite transaction start deferred (read-only use).
READ_ONLY = {"cmem_read_only": True}
_PG_TRANSIENT_CODES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
#: The newest migration in alembic/versions; a test keeps it equal to alembic's head. Opening a
#: store whose database is at this revision then needs no alembic import (start-up time).
SCHEMA_REVISION = "0002"
#: pip packages of the drivers SQLAlchemy imports, by the module it looks for.
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
    "mysql": "mysql-connector-python",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}


def make_engine(db_url: str) -> Engine:
    """Create an engine for ``db_url`` with the store's SQLite settings where it applies.

    A URL that does not parse, names an unknown database or a driver that is not installed is
    refused with a ``DatabaseAccessError`` that says what to do.
    """
    url = _parse_url(db_url)
    try:
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    except NoSuchModuleError:
        raise DatabaseAccessError(
            f"database URL {shown_url(url)}: SQLAlchemy knows no database {url.drivername!r}"
        ) from None
    except ModuleNotFoundError as exc:
        module = (exc.name or "").split(".")[0]
        raise DatabaseAccessError(
            f"the driver of database URL {shown_url(url)} is not installed (no module {module!r}):"
            f" pip install {DRIVER_PACKAGES.get(module, module)}"
        ) from None
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _parse_url(db_url: str) -> URL:
    try:
        return make_url(db_url)
    except ArgumentError:
        shown = db_url if "@" not in db_url else "..." + db_url[db_url.rindex("@") :]  # no password shown
        raise DatabaseAccessError(
            f"{shown!r} is not a database URL (e.g. sqlite:////path/store.db, postgresql+psycopg2://user@host/db)"
        ) from None


def shown_url(url: str | URL) -> str:
    """The URL as it can be printed: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Let the "begin" hook emit BEGIN itself (pysqlite's own implicit BEGIN is deferred
    # and only issued before DML, which breaks both locking and transactional DDL).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=FULL"):
        cursor.execute(f"PRAGMA {pragma}")
    _enable_wal(cursor)
    cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Put the database in WAL mode, retrying while another connection holds the lock it needs.

    WAL mode is kept in the file, so only the first connection to a new database changes it.
    That change takes the exclusive lock, and where waiting for it could deadlock (several
    processes opening one new database at once) SQLite answers "database is locked" at once
    instead of waiting out the busy timeout; so wait here, up to that timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))  # apart, so that the racers do not meet again


def _sqlite_on_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get("cmem_read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def is_transient(exc: DBAPIError) -> bool:
    """True for errors that a retry of the whole transaction can fix (lock waits, PG conflicts)."""
    if getattr(exc.orig, "pgcode", None) in _PG_TRANSIENT_CODES:
        return True
    message = str(exc.orig).lower()
    return isinstance(exc, OperationalError) and ("locked" in message or "busy" in message)


def alembic_config(db_url: str | None = None, connection: Connection | None = None) -> Config:
    """An alembic ``Config`` for this project, independent of the working directory.

    The URL travels in ``Config.attributes`` (not the ini options) because ini
    interpolation would mangle ``%``-escapes in URLs.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    if db_url is not None:
        config.attributes["db_url"] = db_url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The schema revision this code expects."""
    heads = _script().get_heads()
    if len(heads) != 1:
        raise SchemaVersionError(f"the migrations have {len(heads)} heads ({', '.join(heads)}); expected one")
    return heads[0]


def describe_revision(current: str | None) -> str:
    """How a database at revision ``current`` relates to this code, and what to do about it."""
    head = head_revision()
    if current == head:
        return "up to date"
    if current is not None and not _is_known(current):
        return "the database is newer than this code: upgrade continual-mem"
    return "run `cmem db upgrade`"


def current_revision(db_url: str) -> str | None:
    """The revision the database at ``db_url`` is stamped with (None: no schema yet)."""
    engine = make_engine(db_url)
    try:
        return _current_revision(engine)
    finally:
        engine.dispose()


def upgrade(db_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``db_url`` to ``revision`` (what ``cmem db upgrade`` runs)."""
    engine = make_engine(db_url)
    try:
        _refuse_newer(_current_revision(engine))
        _upgrade(engine, revision)
    finally:
        engine.dispose()


def ensure_schema(engine: Engine, upgrade: bool) -> None:
    """Check the database's revision against the code's; upgrade an older one if allowed.

    A revision unknown to this code can only come from newer code, so it is
    refused even when upgrading is allowed.
    """
    current = _current_revision(engine)
    if current == SCHEMA_REVISION:
        return
    head = head_revision()
    if current == head:
        return
    _refuse_newer(current)
    if not upgrade:
        found = f"at revision {current!r}" if current else "not initialised"
        raise SchemaVersionError(f"database schema is {found} but this code needs {head!r}: run `cmem db upgrade`")
    _upgrade(engine, "head")


def _refuse_newer(current: str | None) -> None:
    """A revision unknown to this code can only come from newer code: neither open nor migrate it."""
    if current is not None and current != SCHEMA_REVISION and not _is_known(current):
        raise SchemaVersionError(
            f"database schema revision {current!r} is newer than this code (its newest is {head_revision()!r}):"
            " the code is older than the database; upgrade continual-mem"
        )


def _is_known(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _script().get_revision(revision) is not None
    except CommandError:  # alembic's wording for "can't locate revision"
        return False


def _current_revision(engine: Engine) -> str | None:
    """The revision in alembic's `alembic_version` table, read without importing alembic."""
    with _connect(engine) as conn:
        try:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except (OperationalError, ProgrammingError):  # no such table: an empty database
            return None
        if len(rows) > 1:
            raise SchemaVersionError(f"the database is stamped with {len(rows)} revisions ({', '.join(rows)})")
        return rows[0] if rows else None


@contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    """A read connection; a SQLite file that is not a database is refused by its name."""
    try:
        with engine.execution_options(**READ_ONLY).connect() as conn:
            yield conn
    except DatabaseError as exc:
        if isinstance(exc, OperationalError) or "file is not a database" not in str(exc.orig):
            raise
        raise DatabaseAccessError(f"{engine.url.database} is not a SQLite database ({exc.orig})") from None


def _upgrade(engine: Engine, revision: str) -> None:
    # alembic/env.py runs the migrations on this connection in one transaction
    # (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so processes
    # that start at once on a fresh database upgrade it exactly once.
    from alembic import command

    with engine.connect() as conn:
        command.upgrade(alembic_config(connection=conn), revision)
