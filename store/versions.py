"""``TaskStore``'s versions: immutable, numbered, ``training`` -> ``ready`` | ``failed``; evaluations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from store import models as m
from store.artifacts import (
    ARTIFACT_SUFFIX,
    ArtifactStore,
    StoredArtifact,
    artifact_key,
    read_safetensors_header,
    suffix_of,
)
from store.base import StoreBase, alias_target_join
from store.errors import ArtifactIntegrityError, InvalidStateError
from store.liveness import HEARTBEAT_INTERVAL_S, STALE_AFTER_S, Heartbeat
from store.mapping import version_infos
from store.names import Ref, check_alias
from store.records import VersionInfo, VersionRef
from store.validation import (
    check_int,
    check_json,
    check_status,
    check_text,
    check_training,
    check_usable,
    local_file,
    parse_tag_filter,
)


class VersionsMixin(StoreBase):
    """Versions: begin, complete or fail, evaluate, read, search, delete; their artifacts."""

    artifacts: ArtifactStore

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
        mode = check_text(mode, "mode", max_len=32)
        memory_size = check_int(memory_size, "memory_size", minimum=0)
        hyperparams = check_json(hyperparams, "hyperparams", dict)
        if data_fingerprint is not None:
            data_fingerprint = check_text(data_fingerprint, "data_fingerprint")
        parent = None if parent_version is None else check_int(parent_version, "parent_version", minimum=1)

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
                heartbeat_at=m.utcnow(),
            )
            return version_infos(s, [version])[0]

        return self._write(work)

    def store_artifact(self, artifact_file: Path) -> StoredArtifact:
        """Check that the file is a valid safetensors file and copy it in (temp -> fsync -> rename)."""
        path = local_file(artifact_file, "artifact file")
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
        metrics = check_json(metrics, "metrics", dict)
        if isinstance(artifact_file, StoredArtifact):
            stored = artifact_file
            if not self.artifacts.exists(stored.key):
                raise ArtifactIntegrityError(f"artifact {stored.uri} is missing (expected sha256 {stored.sha256})")
        else:
            with self._reader() as s:
                task, version = self._version(s, ref)
                check_training(task, version)
            stored = self.store_artifact(artifact_file)

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref, lock=True)
            check_training(task, version)
            version.status = "ready"
            version.artifact_uri = stored.uri
            version.artifact_sha256 = stored.sha256
            version.artifact_size = stored.size
            version.metrics = metrics
            version.finished_at = m.utcnow()
            s.flush()
            return version_infos(s, [version])[0]

        return self._write(work)

    def fail_version(self, ref: VersionRef, reason: str) -> VersionInfo:
        reason = check_text(reason, "reason", max_len=None)

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref, lock=True)
            check_training(task, version)
            version.status = "failed"
            version.failure_reason = reason
            version.finished_at = m.utcnow()
            s.flush()
            return version_infos(s, [version])[0]

        return self._write(work)

    def beat(self, ref: VersionRef) -> None:
        """Record that the process training ``ref`` is alive (nothing happens once it has finished)."""

        def work(s: Session) -> None:
            _, version = self._version(s, ref, lock=True)
            if version.status == "training":
                version.heartbeat_at = m.utcnow()

        self._write(work)

    def heartbeat(self, ref: VersionRef, interval_s: float = HEARTBEAT_INTERVAL_S) -> Heartbeat:
        """A context manager that beats for ``ref`` every ``interval_s`` while the work it wraps runs."""
        return Heartbeat(lambda: self.beat(ref), interval_s)

    def stale_versions(self, older_than_s: float = STALE_AFTER_S) -> list[VersionInfo]:
        """``training`` versions whose process gave no sign of life for more than ``older_than_s``."""
        with self._reader() as s:
            return version_infos(s, s.scalars(_stale_query(older_than_s)).all())

    def fail_stale(self, older_than_s: float = STALE_AFTER_S) -> list[VersionInfo]:
        """Mark abandoned ``training`` versions failed (see ``stale_versions``), with the reason.

        Writes only when there is one, so that listing a read-only store still works.
        """
        if not self.stale_versions(older_than_s):
            return []
        reason = f"abandoned: no heartbeat from its training process for more than {older_than_s:g} s"

        def work(s: Session) -> list[VersionInfo]:
            stale = s.scalars(_stale_query(older_than_s).with_for_update()).all()
            now = m.utcnow()
            for version in stale:
                version.status = "failed"
                version.failure_reason = reason
                version.finished_at = now
            s.flush()
            return version_infos(s, stale)

        return self._write(work)

    def add_evaluation(self, ref: VersionRef, data_source: str, metrics: dict[str, Any]) -> VersionInfo:
        """Append an evaluation record to a ready version (the version itself stays unchanged)."""
        data_source = check_text(data_source, "data_source", max_len=None)
        metrics = check_json(metrics, "metrics", dict)

        def work(s: Session) -> VersionInfo:
            task, version = self._version(s, ref)
            check_usable(task, version, "evaluated")
            s.add(m.Evaluation(version_id=version.id, data_source=data_source, metrics=metrics))
            s.flush()
            return version_infos(s, [version])[0]

        return self._write(work)

    def get_version(self, ref: VersionRef) -> VersionInfo:
        """``"task"`` (latest ready), ``"task@3"`` (any status, deleted too) or ``"task@alias"``."""
        with self._reader() as s:
            return version_infos(s, [self._version(s, ref)[1]])[0]

    def list_versions(self, task: str, status: str | None = None, include_deleted: bool = False) -> list[VersionInfo]:
        with self._reader() as s:
            query = (
                select(m.TaskVersion)
                .where(m.TaskVersion.task_id == self._task(s, task).id)
                .order_by(m.TaskVersion.number)
            )
            if status is not None:
                query = query.where(m.TaskVersion.status == check_status(status))
            if not include_deleted:
                query = query.where(m.TaskVersion.deleted_at.is_(None))
            return version_infos(s, s.scalars(query).all())

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
                query = query.where(m.TaskVersion.status == check_status(status))
            if alias is not None:
                query = query.join(m.Alias, alias_target_join()).where(m.Alias.name == check_alias(alias))
            if tag is not None:
                key, value = parse_tag_filter(tag)
                condition = and_(m.VersionTag.version_id == m.TaskVersion.id, m.VersionTag.key == key)
                if value is not None:
                    condition = and_(condition, m.VersionTag.value == value)
                query = query.where(select(m.VersionTag.version_id).where(condition).exists())
            return version_infos(s, s.scalars(query).all())

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
            return version_infos(s, [version])[0]

        return self._write(work)

    def artifact_path(self, ref: VersionRef) -> Path:
        """Local path of a ready version's artifact, after checking its sha256."""
        with self._reader() as s:
            task, version = self._version(s, ref)
            check_usable(task, version, "loaded")
            assert version.artifact_sha256 is not None and version.artifact_uri is not None
            key = artifact_key(version.artifact_sha256, suffix_of(version.artifact_uri))
            sha256 = version.artifact_sha256
        return self.artifacts.verified_path(key, sha256)


def _stale_query(older_than_s: float) -> Select[tuple[m.TaskVersion]]:
    """Training versions whose last heartbeat (or start, for rows from before heartbeats) is too old."""
    cutoff = m.utcnow() - timedelta(seconds=older_than_s)
    return (
        select(m.TaskVersion)
        .where(
            m.TaskVersion.status == "training",
            m.TaskVersion.deleted_at.is_(None),
            func.coalesce(m.TaskVersion.heartbeat_at, m.TaskVersion.created_at) < cutoff,
        )
        .order_by(m.TaskVersion.id)
    )
