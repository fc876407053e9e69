"""Typed ORM rows of the task store (SQLAlchemy 2.x declarative).

Rows are never hard-deleted through the API: versions are soft-deleted so their
numbers stay reserved, and alias moves are kept as an audit trail. Every
constraint is named (see ``NAMING_CONVENTION``) so alembic can alter it later.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column

from store.errors import InvalidStateError

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERSION_STATUSES = ("training", "ready", "failed")
SHA256_LEN = 64
NAME_LEN = 64
TAG_VALUE_LEN = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite keeps no zone, so values come back naive; they were written as UTC,
    so the zone is put back on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; the store only keeps UTC-aware timestamps")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class Backbone(Base):
    __tablename__ = "backbones"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    timm_name: Mapped[str] = mapped_column(String(200))
    weights_sha256: Mapped[str] = mapped_column(String(SHA256_LEN))
    config: Mapped[dict[str, Any]]
    weights_uri: Mapped[str | None] = mapped_column(Text)
    weights_file_sha256: Mapped[str | None] = mapped_column(String(SHA256_LEN))
    weights_size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    backbone_id: Mapped[int] = mapped_column(ForeignKey("backbones.id"), index=True)
    class_names: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None]


class TaskVersion(Base):
    """One trained version of a task; immutable once ``ready`` (see ``_refuse_ready_changes``)."""

    __tablename__ = "task_versions"
    __table_args__ = (
        UniqueConstraint("task_id", "number"),
        ForeignKeyConstraint(
            ["task_id", "parent_version"],
            ["task_versions.task_id", "task_versions.number"],
        ),
        CheckConstraint(f"status IN {VERSION_STATUSES!r}", name="status"),
        CheckConstraint("number >= 1", name="number_positive"),
        CheckConstraint(
            "status <> 'ready' OR (artifact_sha256 IS NOT NULL AND artifact_uri IS NOT NULL"
            " AND artifact_size IS NOT NULL AND finished_at IS NOT NULL)",
            name="ready_has_artifact",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), index=True)
    mode: Mapped[str] = mapped_column(String(32))
    memory_size: Mapped[int]
    hyperparams: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    data_fingerprint: Mapped[str | None] = mapped_column(String(200))
    parent_version: Mapped[int | None]
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(SHA256_LEN))
    artifact_size: Mapped[int | None] = mapped_column(BigInteger)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    #: Refreshed periodically while the training process lives (see ``TaskStore.heartbeat``).
    heartbeat_at: Mapped[datetime | None]


class Evaluation(Base):
    """An append-only evaluation of a version on some data (the version itself stays unchanged)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("task_versions.id"), index=True)
    data_source: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alias(Base):
    """``(task, alias) -> version``; the composite key makes a cross-task target impossible."""

    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("task_id", "name"),
        ForeignKeyConstraint(["task_id", "version_number"], ["task_versions.task_id", "task_versions.number"]),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    name: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    version_number: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasMove(Base):
    """One move of an alias (kept after the alias is removed, for audits and rollbacks)."""

    __tablename__ = "alias_moves"
    __table_args__ = (
        ForeignKeyConstraint(["task_id", "from_version"], ["task_versions.task_id", "task_versions.number"]),
        ForeignKeyConstraint(["task_id", "to_version"], ["task_versions.task_id", "task_versions.number"]),
        CheckConstraint("kind IN ('set', 'rollback', 'remove')", name="kind"),
        Index(None, "task_id", "alias"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    alias: Mapped[str] = mapped_column(String(NAME_LEN))
    kind: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int | None]
    to_version: Mapped[int | None]
    actor: Mapped[str | None] = mapped_column(String(200))
    moved_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskTag(Base):
    __tablename__ = "task_tags"
    __table_args__ = (Index(None, "key", "value"),)

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    value: Mapped[str] = mapped_column(String(TAG_VALUE_LEN))


class VersionTag(Base):
    __tablename__ = "version_tags"
    __table_args__ = (Index(None, "key", "value"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("task_versions.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    value: Mapped[str] = mapped_column(String(TAG_VALUE_LEN))


class ScenarioRun(Base):
    __tablename__ = "scenario_runs"
    __table_args__ = (Index(None, "scenario", "strategy"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scenario: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(200))
    protocol: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    accuracy_matrix: Mapped[list[Any]]
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


#: The only fields of a ready version that may still change (soft delete).
_MUTABLE_WHEN_READY = frozenset({"deleted_at"})


@event.listens_for(TaskVersion, "before_update")
def _refuse_ready_changes(mapper: Mapper[Any], connection: Any, target: TaskVersion) -> None:
    """Guard for every ORM flush, API or not: a version that was ready when loaded cannot change.

    (Bulk ``UPDATE`` statements bypass mapper events; the store never issues them.)
    """
    state = inspect(target)
    status_history = state.attrs.status.history
    was_status = status_history.deleted[0] if status_history.deleted else target.status
    if was_status != "ready":
        return
    changed = sorted(
        attr.key for attr in state.attrs if attr.key not in _MUTABLE_WHEN_READY and attr.history.has_changes()
    )
    if changed:
        raise InvalidStateError(
            f"version #{target.number} of task id {target.task_id} is ready and cannot be changed"
            f" (attempted: {', '.join(changed)})"
        )
