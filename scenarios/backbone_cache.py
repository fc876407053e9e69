"""A per-image cache of the frozen backbone's outputs, shared by reuse-mode runs in one process.

A reuse-mode task (memory-M, head-only, head + class) never changes the backbone's tokens: its class
token only reads, in each block, the keys and values the frozen backbone computed for the image. So
every epoch, experience and strategy of a process that sees the same image needs the same numbers.
`BackboneCache` keeps them per image (each block's backbone keys and values, and the pooled
features the class protocol's router reads: `MemoryViT.backbone_pass(images, features=True)`),
keyed by a hash of the exact model input and of the backbone's weights; `MemoryViT.reuse_logits`
runs only the task tokens over them, with `forward_reuse`'s own operations.

The key is the image as the model gets it, so a cached answer is never stale; a random data
augmentation would only miss every time, so runs with one do not use the cache
(`deterministic_input`). The budget (`DEFAULT_BYTES`) bounds memory: once full, new images
are computed and not kept. A batch with any image not cached runs the backbone on the whole batch,
exactly as an uncached pass would; results with and without the cache are bit-equal (tested).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from continual_mem.model import MemoryViT
from continual_mem.outputs import BackbonePass

#: Memory the cache may hold per process (split-digits with the demo backbone needs ~0.7 GiB).
DEFAULT_BYTES = 2 * 1024**3


def deterministic_input(dataset: Any) -> bool:
    """Whether reading a sample twice gives the same tensor (no random augmentation)."""
    return len(dataset) == 0 or torch.equal(dataset[0][0], dataset[0][0])


def reuse_pass(
    vit: MemoryViT, images: Tensor, tasks: list[str], cache: BackboneCache | None
) -> tuple[dict[str, Tensor], Tensor]:
    """The tasks' logits and the backbone's pooled features: `forward_reuse`, or over `cache`."""
    if cache is None:
        out = vit.forward_reuse(images, tasks)
        return out.logits, out.features  # type: ignore[return-value]
    outputs = cache.outputs(vit, images)
    return vit.reuse_logits(outputs, tasks), outputs.features  # type: ignore[return-value]


class BackboneCache:
    """Per-image backbone keys/values and pooled features, within a memory budget.

    Shared, not copied: a deep copy of a model holding it holds the same cache, and pickling (a
    checkpoint) keeps none of its entries.
    """

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[bytes, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict) -> BackboneCache:
        return self

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes, "bytes": 0, "hits": 0, "misses": 0, "_entries": {}}

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def outputs(self, vit: MemoryViT, images: Tensor) -> BackbonePass:
        """The batch's backbone outputs: from the cache when every image is in it, else computed
        on the whole batch (and the new images kept while the budget allows)."""
        keys = self._keys(vit, images)
        entries = [self._entries.get(k) for k in keys]
        if all(e is not None for e in entries):
            self.hits += len(keys)
            return _stacked(entries)  # type: ignore[arg-type]
        self.misses += len(keys)
        out = vit.backbone_pass(images, features=True)
        for j, key in enumerate(keys):
            if key not in self._entries and not self.full:
                self._store(key, out, j)
        return out

    def _store(self, key: bytes, out: BackbonePass, j: int) -> None:
        kv = torch.stack([torch.stack([k[j], v[j]]) for k, v in out.keys_values])  # (depth, 2, H, N, Dh)
        features = out.features[j].clone()  # type: ignore[index]
        self._entries[key] = (kv, features)
        self.bytes += kv.numel() * kv.element_size() + features.numel() * features.element_size()

    def _keys(self, vit: MemoryViT, images: Tensor) -> list[bytes]:
        """One key per image: its bytes, the backbone's weights, dtype, device and autocast."""
        context = "|".join(
            [
                vit.identity.sha256,
                str(images.dtype),
                str(images.device),
                str(torch.is_autocast_enabled(images.device.type)),
            ]
        ).encode()
        host = images.detach().contiguous().cpu()
        return [hashlib.blake2b(context + row.numpy().tobytes(), digest_size=20).digest() for row in host]

    def describe(self) -> dict[str, object]:
        """JSON-ready counters (kept with a run's config)."""
        return {"images": len(self), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}


def _stacked(entries: list[tuple[Tensor, Tensor]]) -> BackbonePass:
    kv = torch.stack([e[0] for e in entries])  # (B, depth, 2, H, N, Dh)
    features = torch.stack([e[1] for e in entries])
    return BackbonePass([(kv[:, i, 0], kv[:, i, 1]) for i in range(kv.shape[1])], features)
