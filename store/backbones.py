"""``TaskStore``'s backbones: registered once, with their weights as a content-addressed artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import models as m
from store.artifacts import ArtifactStore, artifact_key, suffix_of
from store.base import StoreBase
from store.errors import AlreadyExistsError
from store.mapping import backbone_info
from store.names import check_name
from store.records import BackboneInfo
from store.validation import check_json, check_sha256, check_text, local_file


class BackbonesMixin(StoreBase):
    """Backbones: register (weights copied in), read, list, the weights file."""

    artifacts: ArtifactStore

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
        timm_name = check_text(timm_name, "timm_name")
        weights_sha256 = check_sha256(weights_sha256, "weights_sha256")
        config = check_json(config, "backbone config", dict)
        with self._reader() as s:
            if s.scalar(select(m.Backbone.id).where(m.Backbone.name == name)) is not None:
                raise AlreadyExistsError(f"backbone {name!r} already exists")
        stored = None
        if weights_file is not None:
            weights_path = local_file(weights_file, "weights file")
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
            return backbone_info(row)

        return self._write(work, retry_conflicts=True)

    def get_backbone(self, name: str) -> BackboneInfo:
        with self._reader() as s:
            return backbone_info(self._backbone(s, name))

    def list_backbones(self) -> list[BackboneInfo]:
        with self._reader() as s:
            return [backbone_info(b) for b in s.scalars(select(m.Backbone).order_by(m.Backbone.name))]

    def backbone_weights_path(self, name: str) -> Path | None:
        """Local path of the backbone's weights file, sha256-verified (None if it has none)."""
        with self._reader() as s:
            backbone = self._backbone(s, name)
        if backbone.weights_uri is None or backbone.weights_file_sha256 is None:
            return None
        key = artifact_key(backbone.weights_file_sha256, suffix_of(backbone.weights_uri))
        return self.artifacts.verified_path(key, backbone.weights_file_sha256)
