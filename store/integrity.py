"""What makes an exported task version trustworthy, in pure Python (the store imports no torch).

* A **digest** (sha256) over the export's metadata and every tensor's name, dtype, shape, offsets
  and bytes, written as ``cmem.digest`` by ``export`` and recomputed by ``import``: any flipped
  bit, edited class name or metric, or changed shape is refused. It protects against accidents
  (a truncated copy, a bad disk, a careless edit), not against someone who rewrites the digest.
* A **signature** (HMAC-SHA256 of the digest under a shared secret, ``cmem.signature``): a file
  whose signature verifies was exported by someone holding the key. It protects files that cross
  a trust boundary against deliberate tampering, as long as the key stays secret.
* **Consistency**: the adapter inside must agree with what the export says and with the backbone
  it is imported onto (depth, width, memory size, classes, mode, finite values), so a file that
  would break ``predict`` is refused at import, never first at load time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from store.artifacts import SafetensorsHeader
from store.errors import InvalidArtifactError

DIGEST_KEY = "cmem.digest"
SIGNATURE_KEY = "cmem.signature"
_CHUNK = 1 << 20

# The adapter file layout of `continual_mem.adapter` (the store cannot import it; a test keeps these equal).
ADAPTER_FORMAT = "continual-mem/adapter"
ADAPTER_TENSORS = ("memory", "cls_token", "head.weight", "head.bias")


def content_digest(path: Path, header: SafetensorsHeader, metadata: dict[str, str] | None = None) -> str:
    """sha256 over ``metadata`` (default: the file's own, less digest and signature) and the tensors.

    Tensor entries (dtype, shape, offsets) and the data area's bytes are read from ``path``.
    """
    meta = header.metadata if metadata is None else metadata
    described = {
        "metadata": {k: v for k, v in sorted(meta.items()) if k not in (DIGEST_KEY, SIGNATURE_KEY)},
        "tensors": {name: header.tensors[name] for name in sorted(header.tensors)},
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    with open(path, "rb") as f:
        f.seek(header.data_start)
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def signature(digest: str, key: bytes) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def verify_digest_and_signature(path: Path, header: SafetensorsHeader, key: bytes | None) -> None:
    """Refuse a file whose digest is missing or wrong, or, with a key, whose signature is missing or wrong."""
    recorded = header.metadata.get(DIGEST_KEY)
    if recorded is None:
        raise InvalidArtifactError(
            f"{path} has no digest: it was exported by an older continual-mem or its metadata was stripped;"
            " export it again"
        )
    if not hmac.compare_digest(recorded, content_digest(path, header)):
        raise InvalidArtifactError(
            f"{path} does not match its digest: its tensors or metadata were changed after export"
        )
    if key is None:
        return
    signed = header.metadata.get(SIGNATURE_KEY)
    if signed is None:
        raise InvalidArtifactError(f"{path} is not signed, and CMEM_EXPORT_KEY asks for signed exports")
    if not hmac.compare_digest(signed, signature(recorded, key)):
        raise InvalidArtifactError(f"{path}: its signature does not match CMEM_EXPORT_KEY (another key, or tampered)")


@dataclass(frozen=True)
class AdapterShape:
    """What an adapter's own metadata says about it."""

    depth: int
    dim: int
    num_memory: int
    num_classes: int
    mode: str
    class_names: list[str]
    backbone_sha256: str | None


def adapter_shape(path: Path, header: SafetensorsHeader) -> AdapterShape:
    """Read the adapter's metadata and check its tensors against it: names, F32, shapes, finite values."""
    meta = header.metadata
    if meta.get("format") != ADAPTER_FORMAT:
        raise InvalidArtifactError(f"{path} does not hold a continual-mem adapter (format {meta.get('format')!r})")
    try:
        config = json.loads(meta["config"])
        shape = AdapterShape(
            depth=int(meta["depth"]),
            dim=int(meta["dim"]),
            num_memory=int(config["num_memory"]),
            num_classes=int(config["num_classes"]),
            mode=str(config["mode"]),
            class_names=[str(c) for c in config.get("class_names", [])],
            backbone_sha256=meta.get("backbone_sha256"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArtifactError(f"{path} has invalid adapter metadata ({type(exc).__name__}: {exc})") from None
    expected = {
        "memory": [shape.depth, shape.num_memory, shape.dim],
        "cls_token": [1, 1, shape.dim],
        "head.weight": [shape.num_classes, shape.dim],
        "head.bias": [shape.num_classes],
    }
    if sorted(header.tensors) != sorted(ADAPTER_TENSORS):
        raise InvalidArtifactError(f"{path} holds tensors {sorted(header.tensors)}, expected {sorted(ADAPTER_TENSORS)}")
    for name, entry in header.tensors.items():
        if entry["dtype"] != "F32" or list(entry["shape"]) != expected[name]:
            raise InvalidArtifactError(
                f"{path}: tensor {name!r} is {entry['dtype']}{entry['shape']}, its metadata says F32{expected[name]}"
            )
    _check_finite(path, header)
    return shape


def _check_finite(path: Path, header: SafetensorsHeader) -> None:
    with open(path, "rb") as f:
        for name, entry in header.tensors.items():
            begin, end = entry["data_offsets"]
            f.seek(header.data_start + begin)
            values = array("f")
            values.frombytes(f.read(end - begin))
            if not all(map(math.isfinite, values)):
                raise InvalidArtifactError(f"{path}: tensor {name!r} holds NaN or infinite values")


def check_adapter_matches(path: Path, adapter: AdapterShape, expected: Mapping[str, object]) -> None:
    """Each field of ``expected`` (an ``AdapterShape`` field name: value) equals the adapter's.

    The export's own fields (memory size, mode, classes, backbone sha256) and the backbone's
    config (depth, width) are what the adapter must agree with.
    """
    for field, want in expected.items():
        found = getattr(adapter, field)
        if found != want and not (field == "class_names" and not found):  # older adapters may omit names
            raise InvalidArtifactError(f"{path}: the adapter's {field} is {found!r}, but {want!r} is expected")
