"""Code that test_store_concurrency runs in spawned processes; holds no tests.

Kept light (the standard library and the store only) because every spawned
process imports it before it can start.
"""

from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import event

from store import AlreadyExistsError, TaskStore
from store.db import make_engine


def guarded(target: Any, index: int, barrier: Any, results: Any, *args: Any) -> None:
    """Wait for all workers, run ``target(index, *args)``, and report its result or traceback."""
    try:
        barrier.wait(120)
        results.put(("ok", target(index, *args)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def register_and_add_versions(index: int, home: str, url: str, artifacts: list[str]) -> dict[str, Any]:
    """Open a fresh database, race the other workers to register the backbone and the task, then
    add one version per artifact. Returns which registrations this worker won and its version numbers.
    """
    won = {}
    with TaskStore(home, db_url=url) as store:
        for kind, register in (
            ("backbone", lambda: store.register_backbone("vit-tiny", "vit_tiny_patch16_224", "ab" * 32, {})),
            ("task", lambda: store.register_task("digits", "vit-tiny", ["0", "1", "2"])),
        ):
            try:
                register()
                won[kind] = True
            except AlreadyExistsError:
                won[kind] = False
        numbers = []
        for i, artifact in enumerate(artifacts):
            version = store.begin_version("digits", "memory", 4, {"worker": index, "i": i})
            numbers.append(store.complete_version(version, Path(artifact), {"worker": index}).number)
    return {"won": won, "numbers": numbers}


def open_new_databases(index: int, urls: list[str], barrier: Any) -> int:
    """Open each new database at the same moment as the other workers (the first connection of
    each is the race). Returns how many it opened.
    """
    for url in urls:
        barrier.wait(60)
        engine = make_engine(url)
        engine.connect().close()
        engine.dispose()
    return len(urls)


def die_before_commit(home: str, url: str, artifact: str, how: str) -> None:
    """Begin a version, then die as the UPDATE that would make it ready is sent (its file already in place)."""
    store = TaskStore(home, db_url=url)
    version = store.begin_version("digits", "memory", 4, {})

    @event.listens_for(store._engine, "before_cursor_execute")
    def die(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE TASK_VERSIONS"):
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(17)

    store.complete_version(version, Path(artifact), {"accuracy": 1.0})
