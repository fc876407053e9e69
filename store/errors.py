"""Typed errors of the task store.

Every message is one line that names the thing concerned, so the CLI can print
``Error: <message>`` and nothing else.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotFoundError(StoreError, LookupError):
    """A backbone, task, version, alias, tag or scenario run does not exist."""


class AlreadyExistsError(StoreError):
    """A backbone or task with that name is already registered."""


class InvalidValueError(StoreError, ValueError):
    """An argument is malformed (class names, JSON payloads, ...)."""


class InvalidNameError(InvalidValueError):
    """A name or reference breaks the naming rule."""


class InvalidStateError(StoreError):
    """The operation is not allowed in the entry's current state."""


class BackboneMismatchError(InvalidStateError):
    """An imported version needs a backbone that is missing or has other weights."""


class ArtifactIntegrityError(StoreError):
    """An artifact file is missing, or its bytes do not match the recorded sha256."""


class InvalidArtifactError(ArtifactIntegrityError):
    """A file is not a well-formed safetensors file (or not a continual-mem export)."""


class SchemaVersionError(StoreError):
    """The database schema revision does not match the code's."""


class DatabaseAccessError(StoreError):
    """The database cannot be used: a URL that does not parse or lacks its driver, a file that is not one."""


class StorageError(StoreError):
    """A file or folder of the store, or an export's destination, cannot be read or written."""
