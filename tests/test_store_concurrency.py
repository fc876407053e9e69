"""Several processes at once, and a process killed mid-write (real databases, spawned processes)."""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import test_store_fixtures as fx
from test_store_fixtures import make_artifact, ready_version, seeded_store
from test_store_workers import die_before_commit, guarded, open_new_databases, register_and_add_versions

from store import InvalidStateError, TaskStore
from store.artifacts import artifact_key, sha256_file

# Shared fixtures, bound here so they take precedence over same-named conftest fixtures.
db_url = fx.db_url

WORKERS = 4
VERSIONS_PER_WORKER = 25
_SPAWN = multiprocessing.get_context("spawn")
_TIMEOUT_S = 120


def _run_workers(target: Any, worker_args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(index, *worker_args[index])`` in spawned processes released together by a barrier.

    Returns the workers' results; fails the test with a worker's traceback if one raised.
    """
    barrier = _SPAWN.Barrier(len(worker_args))
    results = _SPAWN.Queue()
    processes = [
        _SPAWN.Process(target=guarded, args=(target, index, barrier, results, *args))
        for index, args in enumerate(worker_args)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(_TIMEOUT_S)
    errors = [detail for status, detail in outcomes if status == "error"]
    assert not errors, "a worker failed:\n" + "\n".join(errors)
    return [detail for _, detail in outcomes]


def test_concurrent_processes_on_a_fresh_database(db_url: str, tmp_path: Path) -> None:
    """4 processes open the same new database at once (racing its migration), race to register the
    same backbone and task, then add 25 versions each: exactly versions 1..100, no error, nothing lost.
    """
    home = tmp_path / "home"
    artifacts = [
        [str(make_artifact(tmp_path / f"w{w}-{i}.safetensors", seed=1000 * w + i)) for i in range(VERSIONS_PER_WORKER)]
        for w in range(WORKERS)
    ]
    outcomes = _run_workers(register_and_add_versions, [(str(home), db_url, paths) for paths in artifacts])

    assert sum(o["won"]["backbone"] for o in outcomes) == 1
    assert sum(o["won"]["task"] for o in outcomes) == 1
    expected = list(range(1, WORKERS * VERSIONS_PER_WORKER + 1))
    assert sorted(n for o in outcomes for n in o["numbers"]) == expected
    with TaskStore(home, db_url=db_url, upgrade=False) as store:
        versions = store.list_versions("digits")
        assert [v.number for v in versions] == expected
        assert {v.status for v in versions} == {"ready"}
        assert len({v.artifact_sha256 for v in versions}) == len(versions)
        for v in versions:
            assert store.artifact_path(v.ref).stat().st_size == v.artifact_size


def test_processes_opening_one_new_sqlite_file_at_once_all_get_it_in_wal_mode(tmp_path: Path) -> None:
    """The first connection switches a new file to WAL, which takes the exclusive lock; SQLite
    answers "database is locked" at once, without the busy timeout, to a racer that would deadlock
    waiting for it. Before the store retried that, about one new file in five failed here.
    """
    paths = [tmp_path / f"new-{i}.sqlite" for i in range(40)]
    barrier = _SPAWN.Barrier(WORKERS)
    opened = _run_workers(open_new_databases, [([f"sqlite:///{p}" for p in paths], barrier)] * WORKERS)

    assert opened == [len(paths)] * WORKERS
    for path in paths:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_process_killed_between_write_and_commit(db_url: str, tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    with seeded_store(home, db_url) as store:
        ready_version(store, "digits", tmp_path, seed=0)
        store.set_alias("digits", "production", 1)

    artifact = make_artifact(tmp_path / "doomed.safetensors", seed=99)
    child = _SPAWN.Process(target=die_before_commit, args=(str(home), db_url, str(artifact), how))
    child.start()
    child.join(_TIMEOUT_S)
    assert child.exitcode == (-signal.SIGKILL if how == "sigkill" else 17)

    orphan = home / "artifacts" / artifact_key(sha256_file(artifact)[0])
    assert orphan.exists()  # the file was renamed into place before the process died
    with TaskStore(home, db_url=db_url) as store:
        assert store.get_version("digits@2").status == "training"
        assert store.get_version("digits").number == 1
        assert store.get_version("digits@production").number == 1
        assert store.artifact_path("digits@production").exists()
        with pytest.raises(InvalidStateError, match=r"digits@2: the version is training, not ready"):
            store.set_alias("digits", "production", 2)
        assert store.gc(min_age_s=0) == [orphan.as_uri()]
        assert not orphan.exists()
        assert store.fail_stale(older_than_s=3600) == []
        assert [v.ref for v in store.fail_stale(older_than_s=0)] == ["digits@2"]
        assert store.get_version("digits@2").status == "failed"
        assert store.deployed()[0].version == 1
