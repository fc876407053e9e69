"""What every part of ``TaskStore`` shares: sessions, the write-retry loop and row lookups.

Every public method runs in its own short transaction and returns frozen records
(``store.records``), never ORM rows. Write transactions are retried when the database
reports a transient conflict (SQLite lock timeout, PostgreSQL serialization failure or
deadlock); rows that a write checks and then changes are locked (``SELECT ... FOR UPDATE``
on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store import models as m
from store.db import READ_ONLY, is_transient
from store.errors import NotFoundError, StoreError
from store.names import MAX_VERSION, Ref, check_name, parse_ref
from store.records import VersionInfo, VersionRef

T = TypeVar("T")

_WRITE_ATTEMPTS = 8
_NUMBER_ATTEMPTS = 100


class StoreBase:
    """Sessions on one engine (readers deferred, writers ``BEGIN IMMEDIATE`` on SQLite) and lookups."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = sessionmaker(engine.execution_options(**READ_ONLY), expire_on_commit=False)
        self._writer = sessionmaker(engine, expire_on_commit=False)

    # --- transactions -------------------------------------------------------------------

    def _write(self, work: Callable[[Session], T], retry_conflicts: bool = False) -> T:
        """Run ``work`` in one write transaction, retried when the database asks for it.

        ``retry_conflicts`` also retries unique-constraint clashes with a concurrent
        writer (e.g. two processes creating the same alias): the retry sees the other
        writer's row and takes the update path, or reports that it already exists.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._writer.begin() as session:
                    return work(session)
            except DBAPIError as exc:
                retry = is_transient(exc) or (retry_conflicts and isinstance(exc, IntegrityError))
                if not retry or attempt >= _WRITE_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.005 * 2**attempt))

    # --- lookups ------------------------------------------------------------------------

    def _task(self, s: Session, name: str) -> m.Task:
        check_name(name, "task name")
        task = s.scalar(select(m.Task).where(m.Task.name == name))
        if task is None:
            raise NotFoundError(f"task {name!r} not found")
        return task

    def _backbone(self, s: Session, name: str) -> m.Backbone:
        check_name(name, "backbone name")
        backbone = s.scalar(select(m.Backbone).where(m.Backbone.name == name))
        if backbone is None:
            raise NotFoundError(f"backbone {name!r} not found")
        return backbone

    def _version(self, s: Session, ref: VersionRef, lock: bool = False) -> tuple[m.Task, m.TaskVersion]:
        parsed = parse_ref(ref.ref if isinstance(ref, VersionInfo) else ref)
        task = self._task(s, parsed.task)
        return task, self._version_of(s, task, parsed, lock)

    def _version_of(self, s: Session, task: m.Task, ref: Ref, lock: bool = False) -> m.TaskVersion:
        query = select(m.TaskVersion).where(m.TaskVersion.task_id == task.id)
        if ref.number is not None:
            if ref.number > MAX_VERSION:  # no such version can exist, and the database could not compare it
                raise NotFoundError(f"version {ref} not found (version numbers are at most {MAX_VERSION})")
            query = query.where(m.TaskVersion.number == ref.number)
            missing = f"version {ref} not found"
        elif ref.alias is not None:
            query = query.join(m.Alias, alias_target_join()).where(m.Alias.name == ref.alias)
            missing = f"alias {ref.alias!r} of task {task.name!r} not found"
        else:
            query = (
                query.where(m.TaskVersion.status == "ready", m.TaskVersion.deleted_at.is_(None))
                .order_by(m.TaskVersion.number.desc())
                .limit(1)
            )
            missing = f"task {task.name!r} has no ready version"
        if lock:
            query = query.with_for_update(of=m.TaskVersion)
        version = s.scalar(query)
        if version is None:
            raise NotFoundError(missing)
        return version

    def _alias_row(self, s: Session, task: m.Task, alias: str) -> m.Alias:
        row = s.scalar(select(m.Alias).where(m.Alias.task_id == task.id, m.Alias.name == alias).with_for_update())
        if row is None:
            raise NotFoundError(f"alias {alias!r} of task {task.name!r} not found")
        return row

    def _insert_version(self, s: Session, task: m.Task, **fields: Any) -> m.TaskVersion:
        """Insert a version numbered MAX(number)+1 over all versions, deleted ones included.

        Two writers can read the same MAX (PostgreSQL, READ COMMITTED); the loser's
        insert hits the (task_id, number) unique constraint, its savepoint is rolled
        back, and it reads MAX again, which now sees the winner's committed row.
        """
        for _ in range(_NUMBER_ATTEMPTS):
            highest = s.scalar(select(func.max(m.TaskVersion.number)).where(m.TaskVersion.task_id == task.id))
            version = m.TaskVersion(task_id=task.id, number=(highest or 0) + 1, **fields)
            try:
                with s.begin_nested():
                    s.add(version)
            except IntegrityError as exc:
                if not is_number_clash(exc):
                    raise
                continue
            return version
        raise StoreError(f"could not allocate a version number for task {task.name!r}: too many concurrent writers")


def alias_target_join() -> Any:
    return and_(m.Alias.task_id == m.TaskVersion.task_id, m.Alias.version_number == m.TaskVersion.number)


def is_number_clash(exc: IntegrityError) -> bool:
    message = str(exc.orig)
    return "uq_task_versions_task_id_number" in message or (
        "UNIQUE constraint failed: task_versions.task_id, task_versions.number" in message
    )
