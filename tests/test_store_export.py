"""Export a version as one self-describing safetensors file, and import it elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_store_fixtures as fx
from safetensors import safe_open
from test_store_fixtures import WEIGHTS_SHA, make_artifact

from store import (
    BackboneMismatchError,
    InvalidArtifactError,
    InvalidStateError,
    TaskStore,
    read_safetensors_metadata,
)
from store.artifacts import read_safetensors_header

# Shared fixtures, bound here so they take precedence over same-named conftest fixtures.
db_url = fx.db_url
sqlite_store = fx.sqlite_store
store = fx.store


def _export(store: TaskStore, tmp_path: Path) -> tuple[Path, Path]:
    """A ready digits@1 (parent of nothing, fingerprinted, tagged) exported; returns (artifact, export)."""
    artifact = make_artifact(tmp_path / "adapter.safetensors", seed=11, metadata={"adapter.layers": "4"})
    version = store.begin_version("digits", "memory", 4, {"lr": 0.01, "epochs": 3}, data_fingerprint="sha:1234")
    store.complete_version(version, artifact, {"accuracy": 0.93})
    return artifact, store.export_version("digits@1", tmp_path / "export" / "digits.safetensors")


def test_export_is_self_describing_and_readable_by_safetensors(store: TaskStore, tmp_path: Path) -> None:
    artifact, exported = _export(store, tmp_path)
    metadata = read_safetensors_metadata(exported)
    assert metadata["adapter.layers"] == "4"  # the artifact's own metadata is kept
    assert metadata["cmem.task"] == "digits" and metadata["cmem.description"] == "three digits"
    assert json.loads(metadata["cmem.class_names"]) == ["0", "1", "2"]
    assert metadata["cmem.backbone.name"] == "vit-tiny"
    assert metadata["cmem.backbone.timm_name"] == "vit_tiny_patch16_224"
    assert metadata["cmem.backbone.weights_sha256"] == WEIGHTS_SHA
    assert json.loads(metadata["cmem.backbone.config"]) == {"img_size": 32}
    assert (metadata["cmem.version"], metadata["cmem.mode"], metadata["cmem.memory_size"]) == ("1", "memory", "4")
    assert json.loads(metadata["cmem.hyperparams"]) == {"lr": 0.01, "epochs": 3}
    assert json.loads(metadata["cmem.metrics"]) == {"accuracy": 0.93}
    assert metadata["cmem.data_fingerprint"] == "sha:1234"
    with safe_open(str(exported), framework="numpy") as exp, safe_open(str(artifact), framework="numpy") as src:
        assert exp.metadata() == metadata
        assert set(exp.keys()) == set(src.keys())
        for key in src.keys():  # noqa: SIM118 (safe_open handles are not dicts)
            np.testing.assert_array_equal(exp.get_tensor(key), src.get_tensor(key))


def test_round_trip_into_another_store(store: TaskStore, tmp_path: Path) -> None:
    artifact, exported = _export(store, tmp_path)
    with TaskStore(tmp_path / "elsewhere") as other:
        with pytest.raises(BackboneMismatchError, match=r"backbone 'vit-tiny' .* is not registered; register it"):
            other.import_version(exported)
        other.register_backbone("vit-tiny", "vit_tiny_patch16_224", WEIGHTS_SHA, {"img_size": 32})
        other.register_task("digits", "vit-tiny", ["0", "1", "2"])
        other.complete_version(
            other.begin_version("digits", "memory", 2, {}), make_artifact(tmp_path / "x.safetensors", 1), {}
        )

        imported = other.import_version(exported)
        assert (imported.ref, imported.status) == ("digits@2", "ready")  # the next number here
        assert (imported.mode, imported.memory_size, imported.data_fingerprint) == ("memory", 4, "sha:1234")
        assert (imported.hyperparams, imported.metrics) == ({"lr": 0.01, "epochs": 3}, {"accuracy": 0.93})
        assert imported.tags == {"imported-from": "digits@1"}

        stored = other.artifact_path("digits@2")
        src_header, out_header = read_safetensors_header(artifact), read_safetensors_header(stored)
        assert src_header.tensors == out_header.tensors
        assert artifact.read_bytes()[src_header.data_start :] == stored.read_bytes()[out_header.data_start :]
        assert read_safetensors_metadata(stored) == read_safetensors_metadata(exported)

        renamed = other.import_version(exported, task_name="digits-copy")
        assert renamed.ref == "digits-copy@1"
        assert other.get_task("digits-copy").class_names == ["0", "1", "2"]
        assert other.get_task("digits-copy").description == "three digits"


def test_import_refuses_other_weights_and_other_classes(sqlite_store: TaskStore, tmp_path: Path) -> None:
    _, exported = _export(sqlite_store, tmp_path)
    with TaskStore(tmp_path / "elsewhere") as other:
        other.register_backbone("vit-tiny", "vit_tiny_patch16_224", "ee" * 32, {})
        with pytest.raises(BackboneMismatchError, match=rf"has weights sha256 {'ee' * 32} here, but .* {WEIGHTS_SHA}"):
            other.import_version(exported)
    sqlite_store.register_task("other-classes", "vit-tiny", ["a", "b", "c"])
    with pytest.raises(InvalidStateError, match=r"task 'other-classes' has classes"):
        sqlite_store.import_version(exported, task_name="other-classes")


def test_import_refuses_malformed_files(sqlite_store: TaskStore, tmp_path: Path) -> None:
    _, exported = _export(sqlite_store, tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(exported.read_bytes()[:-5])
    with pytest.raises(InvalidArtifactError, match=r"truncated"):
        sqlite_store.import_version(truncated)
    plain = make_artifact(tmp_path / "plain.safetensors")
    with pytest.raises(InvalidArtifactError, match=r"is not a continual-mem export"):
        sqlite_store.import_version(plain)
    assert [v.number for v in sqlite_store.list_versions("digits")] == [1]
