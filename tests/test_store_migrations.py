"""alembic: the migrations match the models, go up and down, and schema mismatches are explained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_store_fixtures as fx
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from alembic import command
from store import SchemaVersionError, TaskStore
from store.db import READ_ONLY, alembic_config, current_revision, head_revision, make_engine, upgrade
from store.models import Base

# Shared fixtures, bound here so they take precedence over same-named conftest fixtures.
db_url = fx.db_url

REPO_ROOT = Path(__file__).resolve().parent.parent
STORE_TABLES = set(Base.metadata.tables)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_match_the_models(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.execution_options(**READ_ONLY).connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str, tmp_path: Path) -> None:
    config = alembic_config(db_url=db_url)
    command.upgrade(config, "head")
    assert current_revision(db_url) == head_revision()
    assert _tables(db_url) == STORE_TABLES | {"alembic_version"}
    command.downgrade(config, "base")
    assert current_revision(db_url) is None
    assert _tables(db_url) == {"alembic_version"}
    command.upgrade(config, "head")
    assert current_revision(db_url) == head_revision()
    with TaskStore(tmp_path / "home", db_url=db_url, upgrade=False) as store:
        store.register_backbone("b", "vit_tiny_patch16_224", "ab" * 32, {})
        assert [b.name for b in store.list_backbones()] == ["b"]


def test_older_schema_is_explained_or_upgraded(db_url: str, tmp_path: Path) -> None:
    with pytest.raises(SchemaVersionError, match=r"not initialised but this code needs '\w+': run `cmem db upgrade`"):
        TaskStore(tmp_path / "home", db_url=db_url, upgrade=False)
    upgrade(db_url)
    command.downgrade(alembic_config(db_url=db_url), "base")
    with pytest.raises(SchemaVersionError, match=r"run `cmem db upgrade`"):
        TaskStore(tmp_path / "home", db_url=db_url, upgrade=False)
    with TaskStore(tmp_path / "home", db_url=db_url) as store:  # upgrade=True migrates it
        assert store.list_tasks() == []
    assert current_revision(db_url) == head_revision()


def test_newer_schema_is_refused(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    engine.dispose()
    for allow_upgrade in (True, False):
        with pytest.raises(SchemaVersionError, match=r"the code is older than the database") as err:
            TaskStore(tmp_path / "home", db_url=db_url, upgrade=allow_upgrade)
        assert "'ffff_from_the_future'" in str(err.value)


def test_alembic_command_line(tmp_path: Path) -> None:
    """`alembic -x url=...` and `CMEM_DB_URL` both reach the database, from the repository root."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if k != "CMEM_DB_URL"}
    alembic = [sys.executable, "-m", "alembic"]
    subprocess.run(
        [*alembic, "-x", f"url={url}", "upgrade", "head"], cwd=REPO_ROOT, env=env, check=True, capture_output=True
    )
    assert current_revision(url) == head_revision()
    subprocess.run(
        [*alembic, "downgrade", "base"], cwd=REPO_ROOT, env={**env, "CMEM_DB_URL": url}, check=True, capture_output=True
    )
    assert current_revision(url) is None


def test_schema_revision_constant_is_alembic_head() -> None:
    """`store.db.SCHEMA_REVISION` lets an up-to-date store open without importing alembic."""
    from store.db import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION
