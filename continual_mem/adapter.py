"""A task adapter: the only weights a task owns on top of the frozen backbone.

Per the paper (Sandler et al., CVPR 2022) a task learns
  * `memory`    (L, m, D): m memory tokens for each of the L blocks,
  * `cls_token` (1, 1, D): its own class token, started from the backbone's,
  * `head`      Linear(D, C).
That is L*m*D + D + (D+1)*C trainable numbers. An adapter is saved as ONE safetensors file
(tensors + string metadata); nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import AdapterFormatError, BackboneMismatchError

AttentionMode = Literal["reuse", "full"]
MODES: tuple[str, ...] = ("reuse", "full")
FORMAT_NAME = "continual-mem/adapter"
FORMAT_VERSION = "1"
MEMORY_INIT_STD = 0.02
TENSOR_NAMES = ("memory", "cls_token", "head.weight", "head.bias")
DIGEST_KEY = "content_sha256"
#: The metadata an adapter's digest covers (files may carry more, e.g. an export's).
DIGESTED_METADATA = ("format", "format_version", "depth", "dim", "config", "backbone_name", "backbone_sha256")


@dataclass(frozen=True)
class BackboneIdentity:
    """What an adapter is bound to: the timm architecture and the sha256 of its weights."""

    name: str
    sha256: str


@dataclass(frozen=True)
class AdapterConfig:
    """Shape and behaviour of one task adapter.

    `extends` lists tasks (by name, in the order they were added) whose class tokens and memories
    this task's class token may also attend to in reuse mode: the paper's "model extension".
    Empty means the task is independent of every other task (concatenation).

    `class_ids`, when set, is the label each head output stands for in a benchmark whose class ids
    are not 0..C-1 per task (Avalanche's global class ids); empty means output j is label j.
    """

    num_classes: int
    num_memory: int = 5
    mode: AttentionMode = "reuse"
    class_names: tuple[str, ...] = ()
    extends: tuple[str, ...] = ()
    class_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.num_memory < 0:
            raise ValueError(f"num_memory must be >= 0, got {self.num_memory}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {self.num_classes} classes")
        if self.extends and self.mode != "reuse":
            raise ValueError("model extension (extends) only exists in reuse mode")
        if self.class_ids and (
            len(self.class_ids) != self.num_classes
            or len(set(self.class_ids)) != self.num_classes
            or min(self.class_ids) < 0
        ):
            raise ValueError(f"class_ids must be {self.num_classes} distinct ids >= 0, got {list(self.class_ids)}")


def count_task_parameters(depth: int, num_memory: int, dim: int, num_classes: int) -> int:
    """Trainable numbers of one task: L*m*D memory + D class token + (D+1)*C head."""
    return depth * num_memory * dim + dim + (dim + 1) * num_classes


class TaskAdapter(nn.Module):
    """The learnable memory, class token and head of one task."""

    def __init__(
        self,
        config: AdapterConfig,
        depth: int,
        dim: int,
        backbone: BackboneIdentity | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.depth = depth
        self.dim = dim
        self.backbone = backbone
        self.memory = nn.Parameter(torch.zeros(depth, config.num_memory, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.head = nn.Linear(dim, config.num_classes)
        nn.init.normal_(self.memory, std=MEMORY_INIT_STD)
        nn.init.normal_(self.head.weight, std=MEMORY_INIT_STD)
        nn.init.zeros_(self.head.bias)

    @property
    def mode(self) -> AttentionMode:
        return self.config.mode

    @property
    def num_memory(self) -> int:
        return self.config.num_memory

    def param_groups(self, lr: float, head_lr: float) -> list[dict]:
        """Optimizer groups of the trainable tensors: memory and class token at `lr`, the head at `head_lr`.

        Tokens enter every block through its LayerNorm, which removes their scale: an Adam step as
        large as the head's would turn a token's direction at random. The head is a plain linear
        layer on normalised features and learns fastest at a larger rate.
        """
        tokens = [p for p in (self.memory, self.cls_token) if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return [g for g in ({"params": tokens, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors by file name (detached, contiguous, on the CPU)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def metadata(self) -> dict[str, str]:
        """The string metadata written next to the tensors.

        `class_ids` is written only when set, so an adapter without them keeps the bytes (and the
        content address) it had before that field existed.
        """
        config = asdict(self.config)
        if not config["class_ids"]:
            del config["class_ids"]
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "depth": str(self.depth),
            "dim": str(self.dim),
            "config": json.dumps(config),
        }
        if self.backbone is not None:
            meta["backbone_name"] = self.backbone.name
            meta["backbone_sha256"] = self.backbone.sha256
        return meta

    def save(self, path: str | os.PathLike[str], extra_metadata: dict[str, str] | None = None) -> Path:
        """Write the adapter as one safetensors file (atomically: temp file, then rename), with its digest."""
        path = Path(path)
        tensors = self.tensors()
        meta = self.metadata()
        meta.update(extra_metadata or {})
        meta[DIGEST_KEY] = content_sha256(tensors, meta)
        return write_safetensors(path, tensors, meta)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expect_backbone: BackboneIdentity | None = None,
    ) -> TaskAdapter:
        """Read an adapter file, refusing a truncated/tampered file or one for another backbone.

        Files saved before adapters carried a digest (no `content_sha256`) are read without that check.
        """
        path = Path(path)
        meta, tensors = _read_safetensors(path)
        if DIGEST_KEY in meta and meta[DIGEST_KEY] != content_sha256(tensors, meta):
            raise AdapterFormatError(f"{path} does not match its digest: its tensors or metadata changed after saving")
        adapter = _adapter_from_metadata(path, meta)
        _check_tensor_shapes(path, adapter, tensors)
        if expect_backbone is not None:
            _check_backbone(path, adapter.backbone, expect_backbone)
        with torch.no_grad():
            adapter.load_state_dict(tensors)
        return adapter


def tensors_sha256(tensors: Mapping[str, torch.Tensor], prefix: bytes = b"") -> str:
    """sha256 over `prefix`, then the tensors by name: each one's name, dtype, shape and bytes."""
    digest = hashlib.sha256(prefix)
    for key, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def content_sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """An adapter's digest: its own metadata (`DIGESTED_METADATA`) and its tensors."""
    described = {k: metadata[k] for k in DIGESTED_METADATA if k in metadata}
    return tensors_sha256(tensors, json.dumps(described, sort_keys=True).encode())


_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file with names and metadata in sorted order, so equal adapters give equal bytes.

    (`safetensors.torch.save` orders its header by a hash map: the same weights would get a new
    sha256 on every save, defeating content addressing and "same seed, same artifact".)
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data must start 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw + b"".join(chunks)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write `safetensors_bytes(tensors, metadata)` to `path` atomically (temp file, then rename).

    The core's one file writer (adapters, backbones). The store keeps its own byte-level copy
    (`store.artifacts`): it must not import torch, and it copies tensor bytes it never decodes.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(safetensors_bytes(tensors, metadata))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise AdapterFormatError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is not a readable safetensors file ({exc})") from None
    return meta, tensors


def _adapter_from_metadata(path: Path, meta: dict[str, str]) -> TaskAdapter:
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFormatError(f"{path} is not a continual-mem adapter (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path} has adapter format version {meta.get('format_version')!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    try:
        raw = json.loads(meta["config"])
        raw["class_names"] = tuple(raw.get("class_names", ()))
        raw["extends"] = tuple(raw.get("extends", ()))
        raw["class_ids"] = tuple(int(c) for c in raw.get("class_ids", ()))
        config = AdapterConfig(**raw)
        depth, dim = int(meta["depth"]), int(meta["dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterFormatError(f"{path} has invalid adapter metadata ({exc})") from None
    backbone = None
    if "backbone_sha256" in meta:
        backbone = BackboneIdentity(meta.get("backbone_name", ""), meta["backbone_sha256"])
    return TaskAdapter(config, depth=depth, dim=dim, backbone=backbone)


def _check_tensor_shapes(path: Path, adapter: TaskAdapter, tensors: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    if set(tensors) != set(expected):
        raise AdapterFormatError(f"{path} holds tensors {sorted(tensors)}, expected {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterFormatError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, its metadata says {shape}"
            )
        if not torch.isfinite(tensors[name]).all():
            raise AdapterFormatError(f"{path}: tensor {name!r} holds NaN or infinite values")


def _check_backbone(path: Path, found: BackboneIdentity | None, expected: BackboneIdentity) -> None:
    if found is None:
        raise BackboneMismatchError(f"{path} does not say which backbone it was trained on")
    if found.sha256 != expected.sha256:
        raise BackboneMismatchError(
            f"{path} was trained on backbone {found.name} (weights sha256 {found.sha256[:12]}), "
            f"not on {expected.name} (weights sha256 {expected.sha256[:12]})"
        )


def default_class_names(num_classes: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(num_classes))


__all__ = [
    "AdapterConfig",
    "AttentionMode",
    "BackboneIdentity",
    "TaskAdapter",
    "count_task_parameters",
    "default_class_names",
]
