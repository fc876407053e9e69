"""Artifacts: content addressing, integrity checks, fsspec roots, gc, safetensors headers."""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import test_store_fixtures as fx
from test_store_fixtures import make_artifact, ready_version

from store import ArtifactIntegrityError, InvalidArtifactError, InvalidStateError, TaskStore, read_safetensors_metadata
from store.artifacts import read_safetensors_header, sha256_file, write_safetensors_with_metadata

# Shared fixtures, bound here so they take precedence over same-named conftest fixtures.
sqlite_store = fx.sqlite_store


def test_artifacts_are_content_addressed(sqlite_store: TaskStore, tmp_path: Path) -> None:
    ready_version(sqlite_store, "digits", tmp_path, seed=1)
    info = sqlite_store.get_version("digits@1")
    sha = info.artifact_sha256
    assert sha is not None
    expected = sqlite_store.home / "artifacts" / sha[:2] / f"{sha}.safetensors"
    assert sqlite_store.artifact_path("digits@1") == expected
    assert info.artifact_uri == expected.as_uri()
    assert sha256_file(expected)[0] == sha


def test_tampered_artifact_is_refused(sqlite_store: TaskStore, tmp_path: Path) -> None:
    ready_version(sqlite_store, "digits", tmp_path)
    path = sqlite_store.artifact_path("digits@1")
    recorded = sqlite_store.get_version("digits@1").artifact_sha256
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as err:
        sqlite_store.artifact_path("digits@1")
    message = str(err.value)
    assert str(path) in message and str(recorded) in message and sha256_file(path)[0] in message
    assert "corrupt" in message

    path.unlink()
    with pytest.raises(ArtifactIntegrityError, match=rf"artifact {path} is missing"):
        sqlite_store.artifact_path("digits@1")


def test_training_version_has_no_artifact(sqlite_store: TaskStore) -> None:
    sqlite_store.begin_version("digits", "memory", 4, {})
    with pytest.raises(InvalidStateError, match=r"^version digits@1 is training, not ready, and cannot be loaded$"):
        sqlite_store.artifact_path("digits@1")


def test_invalid_artifact_file_is_refused_and_the_version_stays_training(
    sqlite_store: TaskStore, tmp_path: Path
) -> None:
    version = sqlite_store.begin_version("digits", "memory", 4, {})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InvalidArtifactError, match=r"is not a valid safetensors file"):
        sqlite_store.complete_version(version, garbage, {})
    assert sqlite_store.get_version("digits@1").status == "training"


@pytest.fixture(params=["memory", "file"])
def fsspec_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        root = f"memory://cmem-test-{uuid.uuid4().hex[:8]}"
        yield root
        fs, path = fsspec.core.url_to_fs(root)
        fs.rm(path, recursive=True)
    else:
        yield (tmp_path / "remote").as_uri()


def test_fsspec_artifact_roots(tmp_path: Path, fsspec_root: str) -> None:
    home = tmp_path / "home"
    with TaskStore(home, artifact_root=fsspec_root) as store:
        store.register_backbone("vit-tiny", "vit_tiny_patch16_224", "ab" * 32, {})
        store.register_task("digits", "vit-tiny", ["0", "1"])
        source = make_artifact(tmp_path / "a.safetensors", seed=3)
        info = store.complete_version(store.begin_version("digits", "memory", 4, {}), source, {})
        assert info.artifact_uri is not None and info.artifact_uri.startswith(fsspec_root.rstrip("/") + "/")
        local = store.artifact_path("digits@1")
        assert local.read_bytes() == source.read_bytes()

        # Tamper with the stored file itself: the (re)read refuses it.
        fs, stored_path = fsspec.core.url_to_fs(info.artifact_uri)
        fs.pipe_file(stored_path, b"tampered" + source.read_bytes()[8:])
        if local.is_relative_to(home / "cache"):
            local.unlink()  # else the verified cached copy would be served
        with pytest.raises(ArtifactIntegrityError, match=r"is corrupt"):
            store.artifact_path("digits@1")
        fs.rm(stored_path)
        with pytest.raises(ArtifactIntegrityError, match=r"is missing"):
            store.artifact_path("digits@1")


def test_fsspec_cache_is_verified_on_every_read(tmp_path: Path) -> None:
    root = f"memory://cmem-test-{uuid.uuid4().hex[:8]}"
    with TaskStore(tmp_path / "home", artifact_root=root) as store:
        store.register_backbone("vit-tiny", "vit_tiny_patch16_224", "ab" * 32, {})
        store.register_task("digits", "vit-tiny", ["0", "1"])
        ready_version(store, "digits", tmp_path)
        cached = store.artifact_path("digits@1")
        original = cached.read_bytes()
        cached.write_bytes(b"x" * len(original))  # a corrupted cache is fetched again
        assert store.artifact_path("digits@1").read_bytes() == original
        fs, path = fsspec.core.url_to_fs(root)
        assert store.gc(min_age_s=0) == []
        fs.rm(path, recursive=True)


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_gc_removes_orphans_and_dead_temp_files_only(sqlite_store: TaskStore, tmp_path: Path) -> None:
    ready_version(sqlite_store, "digits", tmp_path, seed=0)
    kept = sqlite_store.artifact_path("digits@1")
    orphan = sqlite_store.artifacts.put(make_artifact(tmp_path / "orphan.safetensors", seed=9))
    orphan_path = sqlite_store.home / "artifacts" / orphan.key
    temp = sqlite_store.home / "artifacts" / "tmp" / "dead.part"
    temp.write_bytes(b"partial")
    for path in (kept, orphan_path, temp):
        _age(path, 7200)
    fresh_orphan = sqlite_store.artifacts.put(make_artifact(tmp_path / "fresh.safetensors", seed=10))

    assert sorted(sqlite_store.gc(dry_run=True)) == sorted([orphan.uri, temp.as_uri()])
    assert orphan_path.exists() and temp.exists()
    assert sorted(sqlite_store.gc()) == sorted([orphan.uri, temp.as_uri()])
    assert not orphan_path.exists() and not temp.exists() and kept.exists()
    assert sqlite_store.gc(min_age_s=0) == [fresh_orphan.uri]
    assert sqlite_store.artifact_path("digits@1") == kept


def test_gc_keeps_backbone_weights_and_deleted_versions(sqlite_store: TaskStore, tmp_path: Path) -> None:
    weights = make_artifact(tmp_path / "w.safetensors", seed=4)
    sqlite_store.register_backbone("pre", "vit_tiny_patch16_224", "cd" * 32, {}, weights_file=weights)
    ready_version(sqlite_store, "digits", tmp_path, seed=5)
    sqlite_store.delete_version("digits@1")  # soft delete keeps the file
    assert sqlite_store.gc(min_age_s=0) == []


# --- safetensors headers --------------------------------------------------------------------


def _f32_entry(shape: object, offsets: list[int]) -> dict[str, object]:
    return {"t": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}


def _with_header(path: Path, header: dict[str, object], data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"abc") and p, "shorter than the 8-byte header length"),
        (lambda p: p.write_bytes(struct.pack("<Q", 10**6) + b"{}") and p, "header length 1000000 but only 2"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{") and p, "header is not JSON"),
        (lambda p: _with_header(p, _f32_entry([2], [0, 8]), b"1234"), "truncated"),
        (lambda p: _with_header(p, _f32_entry([3], [0, 8]), b"12345678"), "spans 8 bytes"),
        (lambda p: _with_header(p, _f32_entry("x", [0, 8]), b"12345678"), "bad entry"),
        (lambda p: _with_header(p, {"__metadata__": {"a": 1}}, b""), "must map strings to strings"),
    ],
)
def test_malformed_safetensors_are_refused(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path / "bad.safetensors")  # type: ignore[operator]
    with pytest.raises(InvalidArtifactError, match=message):
        read_safetensors_header(path)


def test_truncated_real_file_is_refused(tmp_path: Path) -> None:
    path = make_artifact(tmp_path / "a.safetensors")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InvalidArtifactError, match=r"truncated"):
        read_safetensors_metadata(path)


def test_metadata_rewrite_keeps_tensor_bytes_and_alignment(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    source = make_artifact(tmp_path / "a.safetensors", seed=2, metadata={"format": "np"})
    dest = tmp_path / "out" / "b.safetensors"
    write_safetensors_with_metadata(source, dest, {"note": "é ünïcode", "json": json.dumps({"a": [1, 2]})})
    assert read_safetensors_metadata(dest) == {"format": "np", "note": "é ünïcode", "json": '{"a": [1, 2]}'}
    header_in, header_out = read_safetensors_header(source), read_safetensors_header(dest)
    assert header_out.data_start % 8 == 0
    assert source.read_bytes()[header_in.data_start :] == dest.read_bytes()[header_out.data_start :]
    expected, actual = load_file(str(source)), load_file(str(dest))
    assert expected.keys() == actual.keys()
    assert all((expected[k] == actual[k]).all() and expected[k].dtype == actual[k].dtype for k in expected)
