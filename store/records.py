"""Plain, frozen records the store returns; callers never see ORM rows or sessions.

Containers inside them (dicts, lists) are fresh copies: changing them changes nothing stored.
All timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    timm_name: str
    weights_sha256: str
    config: dict[str, Any]
    weights_uri: str | None
    weights_file_sha256: str | None
    weights_size: int | None
    created_at: datetime


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    backbone: str
    class_names: list[str]
    created_at: datetime
    archived_at: datetime | None
    tags: dict[str, str]
    aliases: dict[str, int]

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


@dataclass(frozen=True)
class EvaluationInfo:
    data_source: str
    metrics: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class VersionInfo:
    task: str
    number: int
    status: str
    backbone: str
    mode: str
    memory_size: int
    hyperparams: dict[str, Any]
    metrics: dict[str, Any] | None
    data_fingerprint: str | None
    parent_version: int | None
    artifact_uri: str | None
    artifact_sha256: str | None
    artifact_size: int | None
    failure_reason: str | None
    created_at: datetime
    finished_at: datetime | None
    deleted_at: datetime | None
    tags: dict[str, str]
    aliases: list[str]
    evaluations: list[EvaluationInfo]

    @property
    def ref(self) -> str:
        """``task@number``, accepted by every method that takes a reference."""
        return f"{self.task}@{self.number}"

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True)
class AliasInfo:
    task: str
    alias: str
    version: int
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.task}@{self.version}"


@dataclass(frozen=True)
class AliasMove:
    """One audited move; ``kind`` is ``set``, ``rollback`` or ``remove`` (then ``to_version`` is None)."""

    task: str
    alias: str
    kind: str
    from_version: int | None
    to_version: int | None
    actor: str | None
    moved_at: datetime


@dataclass(frozen=True)
class DeployedEntry:
    """An alias with what a predictor needs to load its version (see ``TaskStore.artifact_path``)."""

    task: str
    alias: str
    version: int
    backbone: str
    class_names: list[str]
    mode: str
    memory_size: int
    metrics: dict[str, Any]
    artifact_sha256: str
    artifact_size: int
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.task}@{self.version}"


@dataclass(frozen=True)
class ScenarioRunInfo:
    id: int
    scenario: str
    strategy: str
    protocol: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    accuracy_matrix: list[list[float]]
    wall_time_s: float | None
    created_at: datetime


#: A version reference: ``"task"``, ``"task@3"``, ``"task@alias"``, or a ``VersionInfo``.
VersionRef = str | VersionInfo
