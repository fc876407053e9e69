"""alembic environment for the task store.

Works three ways: programmatically from ``store.db`` (a live connection in
``config.attributes["connection"]`` or a URL in ``config.attributes["db_url"]``),
and from the command line with ``alembic -x url=... upgrade head`` or
``CMEM_DB_URL``. The whole upgrade runs in one transaction; on PostgreSQL an
advisory lock makes concurrent upgrades wait for each other.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic.autogenerate.api import AutogenContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from alembic import context
from store.db import make_engine
from store.models import Base, UTCDateTime

# An arbitrary constant naming the store's migration lock on PostgreSQL.
_PG_MIGRATION_LOCK = 0x636D656D

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _db_url() -> str:
    url = (
        config.attributes.get("db_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("CMEM_DB_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass `-x url=...`, set CMEM_DB_URL, or set sqlalchemy.url in alembic.ini")
    return url


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render the models' UTC type as the plain column type, so migrations do not import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        transactional_ddl=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = _db_url()
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = make_engine(_db_url())
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
