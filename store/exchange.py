"""Export and import: one version as one self-describing safetensors file, and back into a store.

The format (``EXPORT_FORMAT``) is the adapter's own safetensors file, tensors unchanged, with the
store's fields added to its ``__metadata__`` as ``cmem.*`` strings, a digest over all of it and,
given a key, a signature (``store.integrity`` says what each protects against). An import checks
the file completely (digest, signature, the adapter against the export and the backbone, the
target task) before it copies anything into the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import models as m
from store.artifacts import (
    ARTIFACT_SUFFIX,
    artifact_key,
    read_safetensors_header,
    read_safetensors_metadata,
    sha256_file,
    write_safetensors_with_metadata,
)
from store.errors import (
    ArtifactIntegrityError,
    BackboneMismatchError,
    InvalidArtifactError,
    InvalidStateError,
    InvalidValueError,
)
from store.integrity import (
    DIGEST_KEY,
    SIGNATURE_KEY,
    adapter_shape,
    check_adapter_matches,
    content_digest,
    signature,
    verify_digest_and_signature,
)
from store.mapping import version_infos
from store.names import check_name
from store.records import VersionInfo, VersionRef
from store.validation import check_class_names, check_int, check_json, check_sha256, check_text, local_file
from store.versions import VersionsMixin

EXPORT_FORMAT = "continual-mem/task-version/1"
IMPORTED_FROM_TAG = "imported-from"


class ExchangeMixin(VersionsMixin):
    """Export a version to a file, import a file as a new version."""

    def export_version(self, ref: VersionRef, dest: Path, signing_key: bytes | None = None) -> Path:
        """Write the version as one self-describing safetensors file (tensors unchanged, metadata added).

        The file carries its digest, and with ``signing_key`` an HMAC signature of it.
        """
        with self._reader() as s:
            task, version = self._version(s, ref)
            backbone = s.get_one(m.Backbone, task.backbone_id)
            metadata = export_metadata(task, version, backbone)
            number = version.number
        source = self.artifact_path(f"{task.name}@{number}")
        header = read_safetensors_header(source)
        digest = content_digest(source, header, {**header.metadata, **metadata})
        metadata[DIGEST_KEY] = digest
        if signing_key:
            metadata[SIGNATURE_KEY] = signature(digest, signing_key)
        write_safetensors_with_metadata(source, Path(dest), metadata, remove=() if signing_key else (SIGNATURE_KEY,))
        return Path(dest)

    def import_version(
        self,
        path: Path,
        task_name: str | None = None,
        signing_key: bytes | None = None,
        require_adapter: bool = False,
    ) -> VersionInfo:
        """Add an exported file as a new ready version (creating the task if it is missing).

        Refused unless its digest matches (and, given ``signing_key``, its signature), the backbone
        is registered here with the same weights sha256 (matched by name, else by weights), and the
        task, if it exists, has the same backbone and classes. A file that holds a continual-mem
        adapter (its ``format`` metadata says so; ``require_adapter`` refuses any other) must agree
        with the export's fields and the backbone's depth and width. The file is copied into the
        store only once all of that holds.
        """
        path = local_file(path, "export file")
        header = read_safetensors_header(path)
        export = Export.read(path)
        verify_digest_and_signature(path, header, signing_key)
        adapter = adapter_shape(path, header) if require_adapter or "format" in header.metadata else None
        name = check_name(task_name if task_name is not None else export.task, "task name")
        sha256, size = sha256_file(path)
        key = artifact_key(sha256, ARTIFACT_SUFFIX)

        def work(s: Session) -> VersionInfo:
            now = m.utcnow()
            backbone = self._backbone_for(s, export, path)
            if adapter is not None:
                check_adapter_matches(path, adapter, export.adapter_fields(backbone.config))
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
                check_import_target(task, backbone, export)
            version = self._insert_version(
                s,
                task,
                status="ready",
                mode=export.mode,
                memory_size=export.memory_size,
                hyperparams=export.hyperparams,
                metrics=export.metrics,
                data_fingerprint=export.data_fingerprint,
                artifact_uri=self.artifacts.uri(key),
                artifact_sha256=sha256,
                artifact_size=size,
                created_at=now,
                finished_at=now,
            )
            s.add(m.VersionTag(version_id=version.id, key=IMPORTED_FROM_TAG, value=f"{export.task}@{export.version}"))
            s.flush()
            if self.artifacts.put(path, ARTIFACT_SUFFIX).sha256 != sha256:  # every check passed: copy it in
                raise ArtifactIntegrityError(f"{path} changed while it was being imported")
            return version_infos(s, [version])[0]

        return self._write(work, retry_conflicts=True)

    def _backbone_for(self, s: Session, export: Export, path: Path) -> m.Backbone:
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


def check_import_target(task: m.Task, backbone: m.Backbone, export: Export) -> None:
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


def export_metadata(task: m.Task, version: m.TaskVersion, backbone: m.Backbone) -> dict[str, str]:
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
class Export:
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

    def adapter_fields(self, backbone_config: dict[str, Any]) -> dict[str, object]:
        """What the adapter inside must say (``store.integrity.AdapterShape`` fields), given its backbone."""
        return {
            "num_memory": self.memory_size,
            "mode": self.mode,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "backbone_sha256": self.backbone_sha256,
            "depth": backbone_config.get("depth"),
            "dim": backbone_config.get("embed_dim"),
        }

    @classmethod
    def read(cls, path: Path) -> Export:
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
                class_names=check_class_names(decoded("cmem.class_names", list)),
                version=decoded("cmem.version", int),
                mode=check_text(field("cmem.mode"), "mode", max_len=32),
                memory_size=check_int(decoded("cmem.memory_size", int), "memory_size", minimum=0),
                hyperparams=check_json(decoded("cmem.hyperparams", dict), "hyperparams", dict),
                metrics=check_json(decoded("cmem.metrics", dict), "metrics", dict),
                data_fingerprint=(
                    check_text(metadata["cmem.data_fingerprint"], "data_fingerprint")
                    if "cmem.data_fingerprint" in metadata
                    else None
                ),
                backbone_name=field("cmem.backbone.name"),
                backbone_sha256=check_sha256(field("cmem.backbone.weights_sha256"), "backbone weights_sha256"),
            )
        except InvalidValueError as exc:
            raise InvalidArtifactError(f"{path} has invalid continual-mem metadata: {exc}") from exc
