"""The task store: versioned task entries (SQLAlchemy) and their safetensors artifacts.

Imports neither torch, timm nor Avalanche; see ``TaskStore`` for the API.
"""

from store.artifacts import StoredArtifact, read_safetensors_metadata
from store.errors import (
    AlreadyExistsError,
    ArtifactIntegrityError,
    BackboneMismatchError,
    DatabaseAccessError,
    InvalidArtifactError,
    InvalidNameError,
    InvalidStateError,
    InvalidValueError,
    NotFoundError,
    SchemaVersionError,
    StorageError,
    StoreError,
)
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
from store.store import TaskStore, VersionRef

__all__ = [
    "AliasInfo",
    "AliasMove",
    "AlreadyExistsError",
    "ArtifactIntegrityError",
    "BackboneInfo",
    "BackboneMismatchError",
    "DatabaseAccessError",
    "DeployedEntry",
    "EvaluationInfo",
    "InvalidArtifactError",
    "InvalidNameError",
    "InvalidStateError",
    "InvalidValueError",
    "NotFoundError",
    "ScenarioRunInfo",
    "SchemaVersionError",
    "StorageError",
    "StoreError",
    "StoredArtifact",
    "TaskInfo",
    "TaskStore",
    "VersionInfo",
    "VersionRef",
    "read_safetensors_metadata",
]
