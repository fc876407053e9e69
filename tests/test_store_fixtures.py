"""Fixtures and helpers shared by the store tests (imported by them; holds no tests).

PostgreSQL tests use a fresh, randomly named schema per test (through the
connection's search_path), dropped afterwards, so they can run again and again.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import create_engine, make_url, text

from store import TaskStore

PG_URL = os.environ.get("CMEM_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
WEIGHTS_SHA = "ab" * 32


@functools.cache
def pg_unavailable_reason() -> str | None:
    """None if the test PostgreSQL server answers, else why not (the skip reason)."""
    shown = make_url(PG_URL).render_as_string(hide_password=True)
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # any failure means: no usable server
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"PostgreSQL at {shown} (CMEM_TEST_PG_URL) does not answer: {type(exc).__name__}: {first_line}"
    return None


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections live in a fresh schema, dropped on exit."""
    reason = pg_unavailable_reason()
    if reason:
        pytest.skip(reason)
    schema = f"cmem_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(PG_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with pg_schema_url() as url:
            yield url


@contextmanager
def seeded_store(home: Path, db_url: str | None = None) -> Iterator[TaskStore]:
    """A store with backbone 'vit-tiny' and task 'digits' (classes 0..2) registered."""
    with TaskStore(home, db_url=db_url) as task_store:
        task_store.register_backbone("vit-tiny", "vit_tiny_patch16_224", WEIGHTS_SHA, {"img_size": 32})
        task_store.register_task("digits", "vit-tiny", ["0", "1", "2"], description="three digits")
        yield task_store


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[TaskStore]:
    """``seeded_store`` on each engine."""
    with seeded_store(tmp_path / "home", db_url) as task_store:
        yield task_store


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[TaskStore]:
    """``seeded_store`` on SQLite only, for checks made before any SQL runs."""
    with seeded_store(tmp_path / "home") as task_store:
        yield task_store


def make_artifact(path: Path, seed: int = 0, metadata: dict[str, str] | None = None) -> Path:
    """Write a small, valid safetensors file whose bytes depend on ``seed``."""
    rng = np.random.default_rng(seed)
    save_file(
        {
            "memory": rng.standard_normal((2, 3, 4)).astype(np.float32),
            "head.weight": rng.standard_normal((3, 4)).astype(np.float16),
            "step": np.array([seed], dtype=np.int64),
        },
        str(path),
        metadata=metadata,
    )
    return path


def ready_version(store: TaskStore, task: str, tmp_path: Path, seed: int = 0) -> int:
    """Begin and complete a version of ``task``; return its number."""
    version = store.begin_version(task, "memory", 4, {"lr": 0.01, "seed": seed})
    artifact = make_artifact(tmp_path / f"artifact-{task}-{seed}-{uuid.uuid4().hex[:6]}.safetensors", seed)
    return store.complete_version(version, artifact, {"accuracy": 0.5 + seed / 100}).number
