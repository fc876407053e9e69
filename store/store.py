"""``TaskStore``: the API the CLI and the scenarios call.

Every public method runs in its own short transaction and returns frozen
records (``store.records``), never ORM rows. Write transactions are retried when
the database reports a transient conflict (SQLite lock timeout, PostgreSQL
serialization failure or deadlock); rows that a write checks and then changes
are locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE``
already serialises writers).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Row, Select, Text, and_, func, select, type_coerce
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store import models as m
from store.artifacts import (
    ARTIFACT_SUFFIX,
    StoredArtifact,
    artifact_key,
    open_artifact_store,
    read_safetensors_header,
    read_safetensors_metadata,
    suffix_of,
    write_safetensors_with_metadata,
)
from store.db import READ_ONLY, ensure_schema, is_transient, make_engine
from store.errors import (
    AlreadyExistsError,
    ArtifactIntegrityError,
    BackboneMismatchError,
    InvalidArtifactError,
    InvalidNameError,
    InvalidStateError,
    InvalidValueError,
    NotFoundError,
    StoreError,
)
from store.names import Ref, check_alias, check_name, parse_ref
from store.records import (
    AliasInfo,
    AliasMove,
    BackboneInfo,
    DeployedEntry,
    EvaluationInfo,
    ScenarioRunInfo,
    TaskInfo,
    VersionInfo,
)

T = TypeVar("T")
#: A version reference: ``"task"``, ``"task@3"``, ``"task@alias"``, or a ``VersionInfo``.
VersionRef = str | VersionInfo

_WRITE_ATTEMPTS = 8
_NUMBER_ATTEMPTS = 100
_IN_CHUNK = 5000  # stays below SQLite's and PostgreSQL's bound-parameter limits
_TEXT_LEN = 200
EXPORT_FORMAT = "continual-mem/task-version/1"
IMPORTED_FROM_TAG = "imported-from"


class TaskStore:
    """Versioned task entries in a SQL database, with their artifacts as content-addressed files.

    ``home`` holds the default SQLite database (``store.db``), the default artifact
    root (``artifacts/``) and a cache of remote artifacts (``cache/``). ``db_url``
    takes any SQLAlchemy URL; ``artifact_root`` a directory or an fsspec URL.
    With ``upgrade`` an older schema is migrated on open; without it an older
    schema raises ``SchemaVersionError``. A newer schema always does.
    """

    def __init__(
        self,
        home: str | Path,
        db_url: str | None = None,
        artifact_root: str | None = None,
        upgrade: bool = True,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url or f"sqlite:///{self.home / 'store.db'}"
        self._engine = make_engine(self.db_url)
        try:
            ensure_schema(self._engine, upgrade)
        except BaseException:
            self._engine.dispose()
            raise
        self._reader = sessionmaker(self._engine.execution_options(**READ_ONLY), expire_on_commit=False)
        self._writer = sessionmaker(self._engine, expire_on_commit=False)
        self.artifacts = open_artifact_store(
            artifact_root if artifact_root is not None else self.home / "artifacts",
            cache_dir=self.home / "cache",
        )

    def close(self) -> None:
        """Close the database connections (the store must not be used afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> TaskStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
            query = query.where(m.TaskVersion.number == ref.number)
            missing = f"version {ref} not found"
        elif ref.alias is not None:
            query = query.join(m.Alias, _alias_target_join()).where(m.Alias.name == ref.alias)
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

    # --- records ------------------------------------------------------------------------

    def _task_infos(self, s: Session, tasks: Sequence[m.Task]) -> list[TaskInfo]:
        task_ids = [t.id for t in tasks]
        backbones: dict[int, str] = dict(
            _select_in(
                s,
                lambda ids: select(m.Backbone.id, m.Backbone.name).where(m.Backbone.id.in_(ids)),
                {t.backbone_id for t in tasks},
            )
        )
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        for task_id, key, value in _select_in(
            s,
            lambda ids: select(m.TaskTag.task_id, m.TaskTag.key, m.TaskTag.value).where(m.TaskTag.task_id.in_(ids)),
            task_ids,
        ):
            tags[task_id][key] = value
        aliases: dict[int, dict[str, int]] = defaultdict(dict)
        for task_id, name, number in _select_in(
            s,
            lambda ids: select(m.Alias.task_id, m.Alias.name, m.Alias.version_number).where(m.Alias.task_id.in_(ids)),
            task_ids,
        ):
            aliases[task_id][name] = number
        return [
            TaskInfo(
                name=t.name,
                description=t.description,
                backbone=backbones[t.backbone_id],
                class_names=list(t.class_names),
                created_at=t.created_at,
                archived_at=t.archived_at,
                tags=dict(sorted(tags[t.id].items())),
                aliases=dict(sorted(aliases[t.id].items())),
            )
            for t in tasks
        ]

    def _version_infos(self, s: Session, versions: Sequence[m.TaskVersion]) -> list[VersionInfo]:
        """Records for ``versions`` with their tags, aliases and evaluations (four queries in all)."""
        version_ids = [v.id for v in versions]
        task_ids = {v.task_id for v in versions}
        names = {
            task_id: (task_name, backbone_name)
            for task_id, task_name, backbone_name in _select_in(
                s,
                lambda ids: (
                    select(m.Task.id, m.Task.name, m.Backbone.name)
                    .join(m.Backbone, m.Task.backbone_id == m.Backbone.id)
                    .where(m.Task.id.in_(ids))
                ),
                task_ids,
            )
        }
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        for version_id, key, value in _select_in(
            s,
            lambda ids: select(m.VersionTag.version_id, m.VersionTag.key, m.VersionTag.value).where(
                m.VersionTag.version_id.in_(ids)
            ),
            version_ids,
        ):
            tags[version_id][key] = value
        evaluations: dict[int, list[EvaluationInfo]] = defaultdict(list)
        for version_id, source, metrics, created_at in _select_in(
            s,
            lambda ids: (
                select(m.Evaluation.version_id, m.Evaluation.data_source, m.Evaluation.metrics, m.Evaluation.created_at)
                .where(m.Evaluation.version_id.in_(ids))
                .order_by(m.Evaluation.id)
            ),
            version_ids,
        ):
            evaluations[version_id].append(EvaluationInfo(source, metrics, created_at))
        aliases: dict[tuple[int, int], list[str]] = defaultdict(list)
        for task_id, number, name in _select_in(
            s,
            lambda ids: (
                select(m.Alias.task_id, m.Alias.version_number, m.Alias.name)
                .where(m.Alias.task_id.in_(ids))
                .order_by(m.Alias.name)
            ),
            task_ids,
        ):
            aliases[(task_id, number)].append(name)
        return [
            VersionInfo(
                task=names[v.task_id][0],
                number=v.number,
                status=v.status,
                backbone=names[v.task_id][1],
                mode=v.mode,
                memory_size=v.memory_size,
                hyperparams=v.hyperparams,
                metrics=v.metrics,
                data_fingerprint=v.data_fingerprint,
                parent_version=v.parent_version,
                artifact_uri=v.artifact_uri,
                artifact_sha256=v.artifact_sha256,
                artifact_size=v.artifact_size,
                failure_reason=v.failure_reason,
                created_at=v.created_at,
                finished_at=v.finished_at,
                deleted_at=v.deleted_at,
                tags=dict(sorted(tags[v.id].items())),
                aliases=aliases[(v.task_id, v.number)],
                evaluations=evaluations[v.id],
            )
            for v in versions
        ]

    # --- backbones ----------------------------------------------------------------------

    def register_backbone(
        self,
        name: str,
        timm_name: str,
        weights_sha256: str,
        config: dict[str, Any],
        weights_file: Path | None = None,
    ) -> BackboneInfo:
        """Register a backbone; ``weights_file`` (optional) is copied in as a content-addressed artifact."""
        check_name(name, "backbone name")
        timm_name = _text(timm_name, "timm_name")
        weights_sha256 = _sha256_hex(weights_sha256, "weights_sha256")
        config = _json(config, "backbone config", dict)
        with self._reader() as s:
            if s.scalar(select(m.Backbone.id).where(m.Backbone.name == name)) is not None:
                raise AlreadyExistsError(f"backbone {name!r} already exists")
        stored = None
        if weights_file is not None:
            weights_path = _local_file(weights_file, "weights file")
            stored = self.artifacts.put(weights_path, suffix_of(weights_path.name))

        def work(s: Session) -> BackboneInfo:
            if s.scalar(select(m.Backbone.id).where(m.Backbone.name == name)) is not None:
                raise AlreadyExistsError(f"backbone {name!r} already exists")
            row = m.Backbone(
                name=name,
                timm_name=timm_name,
                weights_sha256=weights_sha256,
                config=config,
                weights_uri=stored.uri if stored else None,
                weights_file_sha256=stored.sha256 if stored else None,
                weights_size=stored.size if stored else None,
            )
            s.add(row)
            s.flush()
            return _backbone_info(row)

        return self._write(work, retry_conflicts=True)

    def get_backbone(self, name: str) -> BackboneInfo:
        with self._reader() as s:
            return _backbone_info(self._backbone(s, name))

    def list_backbones(self) -> list[BackboneInfo]:
        with self._reader() as s:
            return [_backbone_info(b) for b in s.scalars(select(m.Backbone).order_by(m.Backbone.name))]

    def backbone_weights_path(self, name: str) -> Path | None:
        """Local path of the backbone's weights file, sha256-verified (None if it has none)."""
        with self._reader() as s:
            backbone = self._backbone(s, name)
        if backbone.weights_uri is None or backbone.weights_file_sha256 is None:
            return None
        key = artifact_key(backbone.weights_file_sha256, suffix_of(backbone.weights_uri))
        return self.artifacts.verified_path(key, backbone.weights_file_sha256)

    # --- tasks --------------------------------------------------------------------------

    def register_task(self, name: str, backbone: str, class_names: list[str], description: str = "") -> TaskInfo:
        check_name(name, "task name")
        class_names = _class_names(class_names)
        description = _text(description, "description", max_len=None, allow_empty=True)

        def work(s: Session) -> TaskInfo:
            backbone_row = self._backbone(s, backbone)
            if s.scalar(select(m.Task.id).where(m.Task.name == name)) is not None:
                raise AlreadyExistsError(f"task {name!r} already exists")
            task = m.Task(name=name, description=description, backbone_id=backbone_row.id, class_names=class_names)
            s.add(task)
            s.flush()
            return self._task_infos(s, [task])[0]

        return self._write(work, retry_conflicts=True)

    def get_task(self, name: str) -> TaskInfo:
        with self._reader() as s:
            return self._task_infos(s, [self._task(s, name)])[0]

    def list_tasks(
        self, backbone: str | None = None, tag: str | None = None, include_archived: bool = False
    ) -> list[TaskInfo]:
        """Tasks by name; ``tag`` is ``"key"`` (has the tag) or ``"key=value"``."""
        with self._reader() as s:
            query = select(m.Task).order_by(m.Task.name)
            if backbone is not None:
                query = query.where(m.Task.backbone_id == self._backbone(s, backbone).id)
            if tag is not None:
                key, value = _parse_tag_filter(tag)
                condition = and_(m.TaskTag.task_id == m.Task.id, m.TaskTag.key == key)
                if value is not None:
                    condition = and_(condition, m.TaskTag.value == value)
                query = query.where(select(m.TaskTag.task_id).where(condition).exists())
            if not include_archived:
                query = query.where(m.Task.archived_at.is_(None))
            return self._task_infos(s, s.scalars(query).all())

    def archive_task(self, name: str) -> TaskInfo:
        """Hide a task from listings and refuse new versions; its aliases must be removed first."""

        def work(s: Session) -> TaskInfo:
            task = self._task(s, name)
            aliases = s.scalars(select(m.Alias.name).where(m.Alias.task_id == task.id).order_by(m.Alias.name)).all()
            if aliases:
                raise InvalidStateError(
                    f"task {name!r} has aliases {', '.join(map(repr, aliases))}; remove them before archiving"
                )
            if task.archived_at is None:
                task.archived_at = m.utcnow()
            return self._task_infos(s, [task])[0]

        return self._write(work)

    def unarchive_task(self, name: str) -> TaskInfo:
        def work(s: Session) -> TaskInfo:
            task = self._task(s, name)
            task.archived_at = None
            return self._task_infos(s, [task])[0]

        return self._write(work)

    # --- versions -----------------------------------------------------------------------

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
                if not _is_number_clash(exc):
                    raise
                continue
            return version
        raise StoreError(f"could not allocate a version number for task {task.name!r}: too many concurrent writers")

    def begin_version(
        self,
        task: str,
        mode: str,
        memory_size: int,
        hyperparams: dict[str, Any],
        data_fingerprint: str | None = None,
        parent_version: int | None = None,
    ) -> VersionInfo:
        """Open a new version in status ``training``; numbers are never reused."""
        mode = _text(mode, "mode", max_len=32)
        memory_size = _int(memory_size, "memory_size", minimum=0)
        hyperparams = _json(hyperparams, "hyperparams", dict)
        if data_fingerprint is not None:
            data_fingerprint = _text(data_fingerprint, "data_fingerprint")
        parent = None if parent_version is None else _int(parent_version, "parent_version", minimum=1)

        def work(s: Session) -> VersionInfo:
            task_row = self._task(s, task)
            if task_row.archived_at is not None:
                raise InvalidStateError(f"task {task!r} is archived; unarchive it to add versions")
            if parent is not None:
                parent_row = self._version_of(s, task_row, Ref(task, number=parent))
                if parent_row.status != "ready":
                    raise InvalidStateError(f"parent version {task}@{parent} is {parent_row.status}, not ready")
            version = self._insert_version(
                s,
                task_row,
                status="training",
                mode=mode,
                memory_size=memory_size,
                hyperparams=hyperparams,
                data_fingerprint=data_fingerprint,
                parent_version=parent,
            )
            return self._version_infos(s, [version])[0]

        return self._write(work)

    def store_artifact(self, artifact_file: Path) -> StoredArtifact:
        """Check that the file is a valid safetensors file and copy it in (temp -> fsync -> rename)."""
        path = _local_file(artifact_file, "artifact file")
        read_safetensors_header(path)
        return self.artifacts.put(path, ARTIFACT_SUFFIX)

    def complete_version(
        self, ref: VersionRef, artifact_file: Path | StoredArtifact, metrics: dict[str, Any]
    ) -> VersionInfo:
        """Attach the artifact and metrics to a ``training`` version and make it ``ready``.

        The file is stored first; only then does one transaction mark the version
        ready, so a crash in between leaves an orphan file for ``gc``, never a ready
        version without its file. A ``StoredArtifact`` (from ``store_artifact``) skips the copy.
        """
        metrics = _json(metrics, "metrics", dict)
        if isinstance(artifact_file, StoredArtifact):
            stored = artifact_file
            if not self.artifacts.exists(stored.key):
                raise ArtifactIntegrityError(f"artifact {stored.uri} is missing (expected sha256 {stored.sha256})")
        else:
            with self._reader() as s:
                task, version = self._version(s, ref)
                _check_training(task, version)
            stored = self.store_artifact(artifact_file)

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref, lock=True)
            _check_training(task, version)
            version.status = "ready"
            version.artifact_uri = stored.uri
            version.artifact_sha256 = stored.sha256
            version.artifact_size = stored.size
            version.metrics = metrics
            version.finished_at = m.utcnow()
            s.flush()
            return self._version_infos(s, [version])[0]

        return self._write(work)

    def fail_version(self, ref: VersionRef, reason: str) -> VersionInfo:
        reason = _text(reason, "reason", max_len=None)

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref, lock=True)
            _check_training(task, version)
            version.status = "failed"
            version.failure_reason = reason
            version.finished_at = m.utcnow()
            s.flush()
            return self._version_infos(s, [version])[0]

        return self._write(work)

    def fail_stale(self, older_than_s: float) -> list[VersionInfo]:
        """Mark ``training`` versions begun more than ``older_than_s`` ago as failed (their process died)."""
        cutoff = m.utcnow() - timedelta(seconds=older_than_s)

        def work(s: Session) -> list[VersionInfo]:
            stale = s.scalars(
                select(m.TaskVersion)
                .where(
                    m.TaskVersion.status == "training",
                    m.TaskVersion.deleted_at.is_(None),
                    m.TaskVersion.created_at < cutoff,
                )
                .order_by(m.TaskVersion.id)
                .with_for_update()
            ).all()
            now = m.utcnow()
            for version in stale:
                version.status = "failed"
                version.failure_reason = f"abandoned: still training more than {older_than_s:g} s after it began"
                version.finished_at = now
            s.flush()
            return self._version_infos(s, stale)

        return self._write(work)

    def add_evaluation(self, ref: VersionRef, data_source: str, metrics: dict[str, Any]) -> VersionInfo:
        """Append an evaluation record to a ready version (the version itself stays unchanged)."""
        data_source = _text(data_source, "data_source", max_len=None)
        metrics = _json(metrics, "metrics", dict)

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref)
            _check_usable(task, version, "evaluated")
            s.add(m.Evaluation(version_id=version.id, data_source=data_source, metrics=metrics))
            s.flush()
            return self._version_infos(s, [version])[0]

        return self._write(work)

    def get_version(self, ref: VersionRef) -> VersionInfo:
        """``"task"`` (latest ready), ``"task@3"`` (any status, deleted too) or ``"task@alias"``."""
        with self._reader() as s:
            return self._version_infos(s, [self._version(s, ref)[1]])[0]

    def list_versions(self, task: str, status: str | None = None, include_deleted: bool = False) -> list[VersionInfo]:
        with self._reader() as s:
            query = (
                select(m.TaskVersion)
                .where(m.TaskVersion.task_id == self._task(s, task).id)
                .order_by(m.TaskVersion.number)
            )
            if status is not None:
                query = query.where(m.TaskVersion.status == _status(status))
            if not include_deleted:
                query = query.where(m.TaskVersion.deleted_at.is_(None))
            return self._version_infos(s, s.scalars(query).all())

    def search_versions(
        self,
        task: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        alias: str | None = None,
        backbone: str | None = None,
    ) -> list[VersionInfo]:
        """Versions (not deleted) matching every given filter, by task name then number.

        ``tag`` is ``"key"`` or ``"key=value"`` on the version; ``alias`` keeps the
        versions an alias of that name points at.
        """
        with self._reader() as s:
            query = (
                select(m.TaskVersion)
                .join(m.Task, m.TaskVersion.task_id == m.Task.id)
                .where(m.TaskVersion.deleted_at.is_(None))
                .order_by(m.Task.name, m.TaskVersion.number)
            )
            if task is not None:
                query = query.where(m.TaskVersion.task_id == self._task(s, task).id)
            if backbone is not None:
                query = query.where(m.Task.backbone_id == self._backbone(s, backbone).id)
            if status is not None:
                query = query.where(m.TaskVersion.status == _status(status))
            if alias is not None:
                query = query.join(m.Alias, _alias_target_join()).where(m.Alias.name == check_alias(alias))
            if tag is not None:
                key, value = _parse_tag_filter(tag)
                condition = and_(m.VersionTag.version_id == m.TaskVersion.id, m.VersionTag.key == key)
                if value is not None:
                    condition = and_(condition, m.VersionTag.value == value)
                query = query.where(select(m.VersionTag.version_id).where(condition).exists())
            return self._version_infos(s, s.scalars(query).all())

    def delete_version(self, ref: VersionRef) -> VersionInfo:
        """Soft-delete a version: hidden from listings, its number never reused. Refused while aliased."""

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref, lock=True)
            if version.deleted_at is not None:
                raise InvalidStateError(f"version {task.name}@{version.number} is already deleted")
            aliases = s.scalars(
                select(m.Alias.name)
                .where(m.Alias.task_id == task.id, m.Alias.version_number == version.number)
                .order_by(m.Alias.name)
            ).all()
            if aliases:
                raise InvalidStateError(
                    f"version {task.name}@{version.number} is the target of alias"
                    f" {', '.join(map(repr, aliases))}; move or remove the alias first"
                )
            version.deleted_at = m.utcnow()
            s.flush()
            return self._version_infos(s, [version])[0]

        return self._write(work)

    def artifact_path(self, ref: VersionRef) -> Path:
        """Local path of a ready version's artifact, after checking its sha256."""
        with self._reader() as s:
            task, version = self._version(s, ref)
            _check_usable(task, version, "loaded")
            assert version.artifact_sha256 is not None and version.artifact_uri is not None
            key = artifact_key(version.artifact_sha256, suffix_of(version.artifact_uri))
            sha256 = version.artifact_sha256
        return self.artifacts.verified_path(key, sha256)

    # --- aliases ------------------------------------------------------------------------

    def _move_alias(
        self, s: Session, task: m.Task, alias: str, to: int | None, kind: str, actor: str | None
    ) -> AliasInfo | None:
        """Point (or, with ``to=None``, remove) an alias and append the move to its history."""
        row = s.scalar(select(m.Alias).where(m.Alias.task_id == task.id, m.Alias.name == alias).with_for_update())
        now = m.utcnow()
        s.add(
            m.AliasMove(
                task_id=task.id,
                alias=alias,
                kind=kind,
                from_version=row.version_number if row else None,
                to_version=to,
                actor=actor,
                moved_at=now,
            )
        )
        if to is None:
            if row is not None:
                s.delete(row)
            s.flush()
            return None
        if row is None:
            row = m.Alias(task_id=task.id, name=alias, version_number=to, updated_at=now)
            s.add(row)
        else:
            row.version_number = to
            row.updated_at = now
        s.flush()
        return AliasInfo(task=task.name, alias=alias, version=to, updated_at=now)

    def set_alias(
        self, ref_or_task: str, alias: str, version: int | None = None, actor: str | None = None
    ) -> AliasInfo:
        """Point ``alias`` of a task at one of its ready versions: ``set_alias("t", "production", 3)``
        or ``set_alias("t@3", "production")``. Moving to the current target changes nothing.
        """
        check_alias(alias)
        if version is None:
            parsed = parse_ref(ref_or_task)
            if parsed.number is None:
                raise InvalidNameError(
                    f"set_alias needs a version number: pass version= or a reference like '{parsed.task}@3'"
                )
            task_name, number = parsed.task, parsed.number
        else:
            task_name, number = check_name(ref_or_task, "task name"), _int(version, "version", minimum=1)
        actor = None if actor is None else _text(actor, "actor")

        def work(s: Session) -> AliasInfo:
            task = self._task(s, task_name)
            target = self._version_of(s, task, Ref(task_name, number=number), lock=True)
            _check_alias_target(task, target, f"point alias {alias!r} at")
            current = s.scalar(select(m.Alias).where(m.Alias.task_id == task.id, m.Alias.name == alias))
            if current is not None and current.version_number == number:
                return AliasInfo(task=task_name, alias=alias, version=number, updated_at=current.updated_at)
            moved = self._move_alias(s, task, alias, number, "set", actor)
            assert moved is not None
            return moved

        return self._write(work, retry_conflicts=True)

    def rollback_alias(self, task: str, alias: str, actor: str | None = None) -> AliasInfo:
        """Move ``alias`` back to the target it had before its last ``set`` (rollbacks unwind further)."""
        check_alias(alias)
        actor = None if actor is None else _text(actor, "actor")

        def work(s: Session) -> AliasInfo:
            task_row = self._task(s, task)
            self._alias_row(s, task_row, alias)
            # Replay the history as a stack: a set pushes, a rollback pops, a removal clears.
            stack: list[int | None] = []
            for kind, to_version in s.execute(
                select(m.AliasMove.kind, m.AliasMove.to_version)
                .where(m.AliasMove.task_id == task_row.id, m.AliasMove.alias == alias)
                .order_by(m.AliasMove.id)
            ):
                if kind == "set":
                    stack.append(to_version)
                elif kind == "rollback":
                    stack.pop()
                else:
                    stack.clear()
            if len(stack) < 2 or stack[-2] is None:
                raise InvalidStateError(f"alias {alias!r} of task {task!r} has no earlier version to roll back to")
            number = stack[-2]
            target = self._version_of(s, task_row, Ref(task, number=number), lock=True)
            _check_alias_target(task_row, target, f"roll back alias {alias!r} to")
            moved = self._move_alias(s, task_row, alias, number, "rollback", actor)
            assert moved is not None
            return moved

        return self._write(work)

    def remove_alias(self, task: str, alias: str, actor: str | None = None) -> None:
        check_alias(alias)
        actor = None if actor is None else _text(actor, "actor")

        def work(s: Session) -> None:
            task_row = self._task(s, task)
            self._alias_row(s, task_row, alias)
            self._move_alias(s, task_row, alias, None, "remove", actor)

        self._write(work)

    def alias_history(self, task: str, alias: str) -> list[AliasMove]:
        """Every move of the alias, oldest first (also after it was removed)."""
        check_alias(alias)
        with self._reader() as s:
            task_row = self._task(s, task)
            moves = s.scalars(
                select(m.AliasMove)
                .where(m.AliasMove.task_id == task_row.id, m.AliasMove.alias == alias)
                .order_by(m.AliasMove.id)
            ).all()
            if not moves:
                raise NotFoundError(f"alias {alias!r} of task {task!r} not found")
            return [
                AliasMove(task, alias, mv.kind, mv.from_version, mv.to_version, mv.actor, mv.moved_at) for mv in moves
            ]

    def deployed(self, alias: str | None = None) -> list[DeployedEntry]:
        """Every alias (or every alias named ``alias``) with its version's metrics, by task then alias.

        This is the listing a predictor starts from, so it runs as one Core query
        (no ORM row handling) and decodes the JSON columns in one batch.
        """
        query = (
            select(
                m.Task.name,
                m.Alias.name,
                m.Alias.version_number,
                m.Backbone.name,
                type_coerce(m.Task.class_names, Text),
                m.TaskVersion.mode,
                m.TaskVersion.memory_size,
                type_coerce(m.TaskVersion.metrics, Text),
                m.TaskVersion.artifact_sha256,
                m.TaskVersion.artifact_size,
                m.Alias.updated_at,
            )
            .join_from(m.Alias, m.Task, m.Alias.task_id == m.Task.id)
            .join(m.Backbone, m.Task.backbone_id == m.Backbone.id)
            .join(m.TaskVersion, _alias_target_join())
            .order_by(m.Task.name, m.Alias.name)
        )
        if alias is not None:
            query = query.where(m.Alias.name == check_alias(alias))
        with self._reader() as s:
            rows = s.connection().execute(query).all()
        decoded = _decode_json_batch([value for row in rows for value in (row[4], row[7])])
        # Aliases only point at ready versions, which have an artifact (a CHECK constraint), hence the casts.
        return [
            DeployedEntry(
                task=task,
                alias=name,
                version=number,
                backbone=backbone,
                class_names=decoded[2 * i],
                mode=mode,
                memory_size=memory,
                metrics=decoded[2 * i + 1],
                artifact_sha256=cast(str, sha),
                artifact_size=cast(int, size),
                updated_at=updated_at,
            )
            for i, (task, name, number, backbone, _, mode, memory, _, sha, size, updated_at) in enumerate(rows)
        ]

    # --- tags ---------------------------------------------------------------------------

    def set_tag(self, task: str, key: str, value: str, version: int | None = None) -> None:
        """Set a tag on a task, or on one of its versions (tags may change on ready versions)."""
        check_name(key, "tag key")
        value = _text(value, "tag value", max_len=m.TAG_VALUE_LEN, allow_empty=True)

        def work(s: Session) -> None:
            task_row = self._task(s, task)
            row: m.TaskTag | m.VersionTag | None
            if version is None:
                row = s.get(m.TaskTag, (task_row.id, key)) or m.TaskTag(task_id=task_row.id, key=key)
            else:
                target = self._version_of(s, task_row, Ref(task, number=_int(version, "version", minimum=1)))
                if target.deleted_at is not None:
                    raise InvalidStateError(f"version {task}@{target.number} is deleted")
                row = s.get(m.VersionTag, (target.id, key)) or m.VersionTag(version_id=target.id, key=key)
            row.value = value
            s.add(row)

        self._write(work, retry_conflicts=True)

    def remove_tag(self, task: str, key: str, version: int | None = None) -> None:
        check_name(key, "tag key")

        def work(s: Session) -> None:
            task_row = self._task(s, task)
            row: m.TaskTag | m.VersionTag | None
            if version is None:
                row, owner = s.get(m.TaskTag, (task_row.id, key)), f"task {task!r}"
            else:
                target = self._version_of(s, task_row, Ref(task, number=_int(version, "version", minimum=1)))
                row, owner = s.get(m.VersionTag, (target.id, key)), f"version {task}@{target.number}"
            if row is None:
                raise NotFoundError(f"tag {key!r} not found on {owner}")
            s.delete(row)

        self._write(work)

    # --- export / import ----------------------------------------------------------------

    def export_version(self, ref: VersionRef, dest: Path) -> Path:
        """Write the version as one self-describing safetensors file (tensors unchanged, metadata added)."""
        with self._reader() as s:
            task, version = self._version(s, ref)
            backbone = s.get_one(m.Backbone, task.backbone_id)
            metadata = _export_metadata(task, version, backbone)
            number = version.number
        source = self.artifact_path(f"{task.name}@{number}")
        write_safetensors_with_metadata(source, Path(dest), metadata)
        return Path(dest)

    def import_version(self, path: Path, task_name: str | None = None) -> VersionInfo:
        """Add an exported file as a new ready version (creating the task if it is missing).

        The backbone must be registered here with the same weights sha256 (matched
        by name, else by weights); the task, if it exists, must have the same
        backbone and classes.
        """
        path = _local_file(path, "export file")
        export = _Export.read(path)
        name = check_name(task_name if task_name is not None else export.task, "task name")
        stored = self.store_artifact(path)

        def work(s: Session) -> VersionInfo:
            now = m.utcnow()
            backbone = self._backbone_for(s, export, path)
            task = s.scalar(select(m.Task).where(m.Task.name == name))
            if task is None:
                task = m.Task(
                    name=name,
                    description=export.description,
                    backbone_id=backbone.id,
                    class_names=export.class_names,
                )
                s.add(task)
                s.flush()
            else:
                _check_import_target(task, backbone, export)
            version = self._insert_version(
                s,
                task,
                status="ready",
                mode=export.mode,
                memory_size=export.memory_size,
                hyperparams=export.hyperparams,
                metrics=export.metrics,
                data_fingerprint=export.data_fingerprint,
                artifact_uri=stored.uri,
                artifact_sha256=stored.sha256,
                artifact_size=stored.size,
                created_at=now,
                finished_at=now,
            )
            s.add(m.VersionTag(version_id=version.id, key=IMPORTED_FROM_TAG, value=f"{export.task}@{export.version}"))
            s.flush()
            return self._version_infos(s, [version])[0]

        return self._write(work, retry_conflicts=True)

    def _backbone_for(self, s: Session, export: _Export, path: Path) -> m.Backbone:
        backbone = s.scalar(select(m.Backbone).where(m.Backbone.name == export.backbone_name)) or s.scalar(
            select(m.Backbone).where(m.Backbone.weights_sha256 == export.backbone_sha256).order_by(m.Backbone.id)
        )
        if backbone is None:
            raise BackboneMismatchError(
                f"backbone {export.backbone_name!r} (weights sha256 {export.backbone_sha256}) is not registered;"
                f" register it before importing {path}"
            )
        if backbone.weights_sha256 != export.backbone_sha256:
            raise BackboneMismatchError(
                f"backbone {backbone.name!r} has weights sha256 {backbone.weights_sha256} here, but {path}"
                f" was trained on weights {export.backbone_sha256}"
            )
        return backbone

    # --- scenario runs ------------------------------------------------------------------

    def record_scenario_run(
        self,
        scenario: str,
        strategy: str,
        protocol: str,
        config: dict[str, Any],
        metrics: dict[str, Any],
        accuracy_matrix: list[list[float]],
        wall_time_s: float | None = None,
    ) -> ScenarioRunInfo:
        """Keep the result of a benchmark run; ``accuracy_matrix[i][j]``: accuracy on experience j after training i."""
        fields = {
            "scenario": _text(scenario, "scenario"),
            "strategy": _text(strategy, "strategy"),
            "protocol": _text(protocol, "protocol"),
            "config": _json(config, "config", dict),
            "metrics": _json(metrics, "metrics", dict),
            "accuracy_matrix": _matrix(accuracy_matrix),
            "wall_time_s": None if wall_time_s is None else _finite(wall_time_s, "wall_time_s"),
        }

        def work(s: Session) -> ScenarioRunInfo:
            row = m.ScenarioRun(**fields)
            s.add(row)
            s.flush()
            return _scenario_run_info(row)

        return self._write(work)

    def list_scenario_runs(self, scenario: str | None = None, strategy: str | None = None) -> list[ScenarioRunInfo]:
        query = select(m.ScenarioRun).order_by(m.ScenarioRun.id)
        if scenario is not None:
            query = query.where(m.ScenarioRun.scenario == scenario)
        if strategy is not None:
            query = query.where(m.ScenarioRun.strategy == strategy)
        with self._reader() as s:
            return [_scenario_run_info(row) for row in s.scalars(query)]

    def get_scenario_run(self, run_id: int) -> ScenarioRunInfo:
        with self._reader() as s:
            row = s.get(m.ScenarioRun, run_id)
            if row is None:
                raise NotFoundError(f"scenario run {run_id} not found")
            return _scenario_run_info(row)

    # --- maintenance --------------------------------------------------------------------

    def gc(self, dry_run: bool = False, min_age_s: float = 3600.0) -> list[str]:
        """Remove artifact files no row refers to, and temp files of writes that never finished.

        Returns their URIs. Only files older than ``min_age_s`` are considered: a
        file just renamed into place may belong to a ``complete_version`` that has
        not committed yet. The files are listed before the references are read, so
        a file committed in between is seen as referenced. ``training`` versions
        are left alone (see ``fail_stale``).
        """
        candidates = [entry for entry in self.artifacts.entries() if entry.age_s >= min_age_s]
        with self._reader() as s:
            referenced = {
                artifact_key(sha256, suffix_of(uri))
                for sha256, uri in s.execute(
                    select(m.TaskVersion.artifact_sha256, m.TaskVersion.artifact_uri)
                    .where(m.TaskVersion.artifact_sha256.is_not(None))
                    .union(
                        select(m.Backbone.weights_file_sha256, m.Backbone.weights_uri).where(
                            m.Backbone.weights_file_sha256.is_not(None)
                        )
                    )
                )
                if sha256 is not None and uri is not None
            }
        removed = []
        for entry in candidates:
            if entry.is_temp or entry.key not in referenced:
                if not dry_run:
                    self.artifacts.remove(entry.key)
                removed.append(self.artifacts.uri(entry.key))
        return removed


# --- helpers ------------------------------------------------------------------------------


def _alias_target_join() -> Any:
    return and_(m.Alias.task_id == m.TaskVersion.task_id, m.Alias.version_number == m.TaskVersion.number)


AnyRow = Row[*tuple[Any, ...]]
AnySelect = Select[*tuple[Any, ...]]


def _select_in(s: Session, make_query: Callable[[list[int]], AnySelect], ids: Iterable[int]) -> list[AnyRow]:
    """Run ``make_query(chunk)`` over ``ids`` in chunks small enough for any bound-parameter limit."""
    unique = sorted(set(ids))
    rows: list[AnyRow] = []
    for start in range(0, len(unique), _IN_CHUNK):
        rows.extend(s.execute(make_query(unique[start : start + _IN_CHUNK])).all())
    return rows


def _decode_json_batch(values: list[Any]) -> list[Any]:
    """Decode JSON texts with one parser call, several times faster than one call per value.

    Drivers that decode JSON themselves (psycopg2) hand back objects, which pass through.
    """
    if all(isinstance(value, str) for value in values):
        return list(json.loads("[" + ",".join(values) + "]"))
    return [json.loads(value) if isinstance(value, str) else value for value in values]


def _is_number_clash(exc: IntegrityError) -> bool:
    message = str(exc.orig)
    return "uq_task_versions_task_id_number" in message or (
        "UNIQUE constraint failed: task_versions.task_id, task_versions.number" in message
    )


def _check_training(task: m.Task, version: m.TaskVersion) -> None:
    ref = f"{task.name}@{version.number}"
    if version.deleted_at is not None:
        raise InvalidStateError(f"version {ref} is deleted and cannot be changed")
    if version.status == "ready":
        raise InvalidStateError(f"version {ref} is ready and cannot be changed")
    if version.status != "training":
        raise InvalidStateError(
            f"version {ref} is {version.status}; only a training version can be completed or failed"
        )


def _check_usable(task: m.Task, version: m.TaskVersion, action: str) -> None:
    ref = f"{task.name}@{version.number}"
    if version.deleted_at is not None:
        raise InvalidStateError(f"version {ref} is deleted and cannot be {action}")
    if version.status != "ready":
        raise InvalidStateError(f"version {ref} is {version.status}, not ready, and cannot be {action}")


def _check_alias_target(task: m.Task, version: m.TaskVersion, action: str) -> None:
    ref = f"{task.name}@{version.number}"
    if version.deleted_at is not None:
        raise InvalidStateError(f"cannot {action} {ref}: the version is deleted")
    if version.status != "ready":
        raise InvalidStateError(f"cannot {action} {ref}: the version is {version.status}, not ready")


def _check_import_target(task: m.Task, backbone: m.Backbone, export: _Export) -> None:
    if task.archived_at is not None:
        raise InvalidStateError(f"task {task.name!r} is archived; unarchive it to import versions")
    if task.backbone_id != backbone.id:
        raise BackboneMismatchError(
            f"task {task.name!r} uses another backbone than {backbone.name!r}, which the file was trained on"
        )
    if list(task.class_names) != export.class_names:
        raise InvalidStateError(
            f"task {task.name!r} has classes {task.class_names} but the file has {export.class_names};"
            " import it under another task name"
        )


def _backbone_info(row: m.Backbone) -> BackboneInfo:
    return BackboneInfo(
        name=row.name,
        timm_name=row.timm_name,
        weights_sha256=row.weights_sha256,
        config=row.config,
        weights_uri=row.weights_uri,
        weights_file_sha256=row.weights_file_sha256,
        weights_size=row.weights_size,
        created_at=row.created_at,
    )


def _scenario_run_info(row: m.ScenarioRun) -> ScenarioRunInfo:
    return ScenarioRunInfo(
        id=row.id,
        scenario=row.scenario,
        strategy=row.strategy,
        protocol=row.protocol,
        config=row.config,
        metrics=row.metrics,
        accuracy_matrix=row.accuracy_matrix,
        wall_time_s=row.wall_time_s,
        created_at=row.created_at,
    )


# --- argument checks ----------------------------------------------------------------------


def _text(value: object, what: str, max_len: int | None = _TEXT_LEN, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise InvalidValueError(f"{what} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise InvalidValueError(f"{what} must be at most {max_len} characters, got {len(value)}")
    return value


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _sha256_hex(value: object, what: str) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidValueError(f"{what} must be a sha256 hex digest (64 hex digits), got {value!r}")
    return text


def _status(value: str) -> str:
    if value not in m.VERSION_STATUSES:
        raise InvalidValueError(f"unknown status {value!r}: expected one of {', '.join(m.VERSION_STATUSES)}")
    return value


def _json(value: Any, what: str, kind: type) -> Any:
    """Check ``value`` is JSON data of type ``kind`` and return it as it will read back.

    NaN and infinity are refused: PostgreSQL's json type cannot hold them. Use None.
    """
    if not isinstance(value, kind):
        raise InvalidValueError(f"{what} must be a {kind.__name__}, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"{what} must be JSON data without NaN or infinity ({exc})") from exc


def _class_names(value: object) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidValueError(f"class_names must be a non-empty list of strings, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(f"class names must be non-empty strings, got {name!r}")
    repeated = sorted(name for name, count in Counter(value).items() if count > 1)
    if repeated:
        raise InvalidValueError(f"class names must be unique; repeated: {', '.join(map(repr, repeated))}")
    return list(value)


def _matrix(value: object) -> list[list[float]]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(row, (list, tuple)) for row in value):
        raise InvalidValueError("accuracy_matrix must be a list of lists of numbers")
    return [[_finite(x, "accuracy_matrix entry") for x in row] for row in value]


def _parse_tag_filter(tag: str) -> tuple[str, str | None]:
    key, sep, value = tag.partition("=")
    return check_name(key, "tag key"), (value if sep else None)


def _local_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{what} {path} not found")
    return path


# --- export format ------------------------------------------------------------------------


def _export_metadata(task: m.Task, version: m.TaskVersion, backbone: m.Backbone) -> dict[str, str]:
    """The ``__metadata__`` entries of an export (safetensors metadata values must be strings)."""
    metadata = {
        "cmem.format": EXPORT_FORMAT,
        "cmem.task": task.name,
        "cmem.description": task.description,
        "cmem.class_names": json.dumps(task.class_names),
        "cmem.version": str(version.number),
        "cmem.mode": version.mode,
        "cmem.memory_size": str(version.memory_size),
        "cmem.hyperparams": json.dumps(version.hyperparams, sort_keys=True),
        "cmem.metrics": json.dumps(version.metrics, sort_keys=True),
        "cmem.artifact_sha256": str(version.artifact_sha256),
        "cmem.backbone.name": backbone.name,
        "cmem.backbone.timm_name": backbone.timm_name,
        "cmem.backbone.weights_sha256": backbone.weights_sha256,
        "cmem.backbone.config": json.dumps(backbone.config, sort_keys=True),
    }
    if version.data_fingerprint is not None:
        metadata["cmem.data_fingerprint"] = version.data_fingerprint
    return metadata


@dataclass(frozen=True)
class _Export:
    """The store's fields read back from an export's metadata."""

    task: str
    description: str
    class_names: list[str]
    version: int
    mode: str
    memory_size: int
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: str | None
    backbone_name: str
    backbone_sha256: str

    @classmethod
    def read(cls, path: Path) -> _Export:
        metadata = read_safetensors_metadata(path)
        if metadata.get("cmem.format") != EXPORT_FORMAT:
            raise InvalidArtifactError(
                f"{path} is not a continual-mem export: metadata 'cmem.format' is"
                f" {metadata.get('cmem.format')!r}, expected {EXPORT_FORMAT!r}"
            )

        def field(key: str) -> str:
            if key not in metadata:
                raise InvalidArtifactError(f"{path} is an incomplete continual-mem export: metadata {key!r} is missing")
            return metadata[key]

        def decoded(key: str, kind: type) -> Any:
            try:
                value = json.loads(field(key))
            except json.JSONDecodeError as exc:
                raise InvalidArtifactError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from exc
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise InvalidArtifactError(f"{path}: metadata {key!r} must hold a {kind.__name__}")
            return value

        try:
            return cls(
                task=field("cmem.task"),
                description=field("cmem.description"),
                class_names=_class_names(decoded("cmem.class_names", list)),
                version=decoded("cmem.version", int),
                mode=_text(field("cmem.mode"), "mode", max_len=32),
                memory_size=_int(decoded("cmem.memory_size", int), "memory_size", minimum=0),
                hyperparams=_json(decoded("cmem.hyperparams", dict), "hyperparams", dict),
                metrics=_json(decoded("cmem.metrics", dict), "metrics", dict),
                data_fingerprint=(
                    _text(metadata["cmem.data_fingerprint"], "data_fingerprint")
                    if "cmem.data_fingerprint" in metadata
                    else None
                ),
                backbone_name=field("cmem.backbone.name"),
                backbone_sha256=_sha256_hex(field("cmem.backbone.weights_sha256"), "backbone weights_sha256"),
            )
        except InvalidValueError as exc:
            raise InvalidArtifactError(f"{path} has invalid continual-mem metadata: {exc}") from exc
