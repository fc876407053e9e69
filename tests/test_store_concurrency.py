"""Several processes at once, and a process killed mid-write (real databases, spawned processes)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from test_store_fixtures import db_url, make_artifact, ready_version, seeded_store  # noqa: F401

from store import AlreadyExistsError, InvalidStateError, TaskStore
from store.artifacts import artifact_key, sha256_file

WORKERS = 4
VERSIONS_PER_WORKER = 25
_SPAWN = multiprocessing.get_context("spawn")
_JOIN_TIMEOUT_S = 120


def _run_workers(target: Any, *args: Any) -> list[Any]:
    """Start WORKERS spawned processes that wait at a barrier, then run ``target(index, *args)``.

    Returns each worker's result; fails the test with the worker's traceback if one raised.
    """
    barrier = _SPAWN.Barrier(WORKERS)
    results = _SPAWN.Queue()
    processes = [
        _SPAWN.Process(target=_guarded, args=(target, index, barrier, results, *args)) for index in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=_JOIN_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(_JOIN_TIMEOUT_S)
    errors = [detail for status, detail in outcomes if status == "error"]
    assert not errors, "a worker failed:\n" + "\n".join(errors)
    return [detail for _, detail in outcomes]


def _guarded(target: Any, index: int, barrier: Any, results: Any, *args: Any) -> None:
    try:
        barrier.wait(_JOIN_TIMEOUT_S)
        results.put(("ok", target(index, *args)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _add_versions(index: int, home: str, url: str, scratch: str) -> list[int]:
    numbers = []
    with TaskStore(home, db_url=url) as store:
        for i in range(VERSIONS_PER_WORKER):
            version = store.begin_version("digits", "memory", 4, {"worker": index, "i": i})
            artifact = make_artifact(Path(scratch) / f"w{index}-{i}.safetensors", seed=1000 * index + i)
            numbers.append(store.complete_version(version, artifact, {"worker": index}).number)
    return numbers


def test_concurrent_writers_get_every_number_once(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with seeded_store(home, db_url):
        pass
    numbers = _run_workers(_add_versions, str(home), db_url, str(tmp_path))
    assert sorted(n for worker in numbers for n in worker) == list(range(1, WORKERS * VERSIONS_PER_WORKER + 1))
    with TaskStore(home, db_url=db_url) as store:
        versions = store.list_versions("digits")
        assert [v.number for v in versions] == list(range(1, WORKERS * VERSIONS_PER_WORKER + 1))
        assert {v.status for v in versions} == {"ready"}
        assert len({v.artifact_sha256 for v in versions}) == len(versions)
        for v in versions[:: VERSIONS_PER_WORKER - 1]:
            store.artifact_path(v.ref)


def _open_and_register(index: int, home: str, url: str) -> str:
    with TaskStore(home, db_url=url) as store:  # all four open a fresh database at once
        try:
            store.register_backbone("vit-tiny", "vit_tiny_patch16_224", "ab" * 32, {})
        except AlreadyExistsError as exc:
            return str(exc)
        return "registered"


def test_concurrent_first_open_and_registration(db_url: str, tmp_path: Path) -> None:
    outcomes = _run_workers(_open_and_register, str(tmp_path / "home"), db_url)
    assert sorted(outcomes) == ["backbone 'vit-tiny' already exists"] * (WORKERS - 1) + ["registered"]


def _die_before_commit(home: str, url: str, artifact: str, how: str) -> None:
    """Begin a version, then die as the UPDATE that would make it ready is sent (file already in place)."""
    store = TaskStore(home, db_url=url)
    version = store.begin_version("digits", "memory", 4, {})

    @event.listens_for(store._engine, "before_cursor_execute")
    def die(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE TASK_VERSIONS"):
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(17)

    store.complete_version(version, Path(artifact), {"accuracy": 1.0})


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_process_killed_between_write_and_commit(db_url: str, tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    with seeded_store(home, db_url) as store:
        ready_version(store, "digits", tmp_path, seed=0)
        store.set_alias("digits", "production", 1)

    artifact = make_artifact(tmp_path / "doomed.safetensors", seed=99)
    child = _SPAWN.Process(target=_die_before_commit, args=(str(home), db_url, str(artifact), how))
    child.start()
    child.join(_JOIN_TIMEOUT_S)
    assert child.exitcode == (-signal.SIGKILL if how == "sigkill" else 17)

    orphan = home / "artifacts" / artifact_key(sha256_file(artifact)[0])
    assert orphan.exists()  # the file was renamed into place before the process died
    with TaskStore(home, db_url=db_url) as store:
        assert store.get_version("digits@2").status == "training"
        assert store.get_version("digits").number == 1
        assert store.get_version("digits@production").number == 1
        assert store.artifact_path("digits@production").exists()
        with pytest.raises(InvalidStateError, match="digits@2: the version is training, not ready"):
            store.set_alias("digits", "production", 2)
        assert store.gc(min_age_s=0) == [orphan.as_uri()]
        assert not orphan.exists()
        assert [v.ref for v in store.fail_stale(older_than_s=0)] == ["digits@2"]
        assert store.get_version("digits@2").status == "failed"
        assert store.deployed()[0].version == 1
