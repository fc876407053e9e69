"""Backbone-feature cache: a reuse-mode epoch after the first runs only the task tokens.

In reuse mode the backbone tokens never see a task: each block's keys and values of the backbone
tokens depend on the frozen backbone and the image only. Without data augmentation every epoch
feeds the same images, so the first epoch's `BackbonePass` of each image serves every later
epoch, and those epochs cost only the task class tokens. The cache holds, for every training
image, each block's keys and values (2 x depth x tokens x width numbers per image), in memory,
within a budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .model import MemoryViT
from .outputs import BackbonePass
from .train import GIB, available_bytes

#: Share of the free memory the cache may take when no budget is given.
DEFAULT_SHARE = 0.5


def default_budget_bytes(device: str = "cpu") -> int:
    """Half of the memory free on `device` now (1 GiB when that cannot be told)."""
    free = available_bytes(device)
    return int(free * DEFAULT_SHARE) if free is not None else GIB


def cache_bytes(model: MemoryViT, num_images: int, dtype: torch.dtype = torch.float32) -> int:
    """What caching every block's backbone keys and values of `num_images` images takes."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * model.depth * num_images * model.tokens_per_image * model.dim * element


@dataclass(frozen=True)
class CachePlan:
    """Whether the cache is on, what it takes and why."""

    enabled: bool
    reason: str
    bytes_needed: int
    budget_bytes: int

    def describe(self) -> str:
        state = "on" if self.enabled else "off"
        return f"feature cache {state}: {self.reason}"


def plan_cache(
    model: MemoryViT,
    num_images: int,
    *,
    epochs: int,
    budget_bytes: int | None = None,
    random_pipeline: bool = False,
    reuse_mode: bool = True,
    world_size: int = 1,
    device: str = "cpu",
) -> CachePlan:
    """Decide whether caching the backbone's keys/values pays and fits, and say why."""
    need = cache_bytes(model, num_images)
    budget = default_budget_bytes(device) if budget_bytes is None else budget_bytes
    size = f"{need / GIB:.2f} GiB for {num_images} images"

    def off(reason: str) -> CachePlan:
        return CachePlan(False, reason, need, budget)

    if not reuse_mode:
        return off("full mode: the memory changes every backbone token, so there is nothing to reuse")
    if random_pipeline:
        return off("the data pipeline is random (augmentation): the backbone sees other pixels every epoch")
    if epochs < 2:
        return off("one epoch: no image is seen twice")
    if world_size > 1:
        return off("under torchrun each process sees other images every epoch")
    if budget <= 0:
        return off("the cache budget is 0")
    if need > budget:
        return off(f"each block's backbone keys and values take {size}, over the {budget / GIB:.2f} GiB budget")
    return CachePlan(
        True,
        f"each block's backbone keys and values ({size}, budget {budget / GIB:.2f} GiB) are kept from the first"
        " epoch; later epochs run only the task tokens",
        need,
        budget,
    )


class FeatureCache:
    """Every training image's `BackbonePass`, filled during the first epoch, served after it."""

    def __init__(self, num_images: int) -> None:
        self._num_images = num_images
        self._keys_values: list[tuple[Tensor, Tensor]] = []
        self._filled = torch.zeros(num_images, dtype=torch.bool)

    def get(self, index: Tensor) -> BackbonePass | None:
        """The pass of images `index` (rows of the training images), or None if not all cached."""
        if not self._keys_values or not bool(self._filled[index].all()):
            return None
        rows = index.to(self._keys_values[0][0].device)
        return BackbonePass([(k[rows], v[rows]) for k, v in self._keys_values])

    def put(self, index: Tensor, computed: BackbonePass) -> None:
        """Keep the pass of images `index`."""
        if not self._keys_values:
            self._keys_values = [
                (k.new_empty((self._num_images, *k.shape[1:])), v.new_empty((self._num_images, *v.shape[1:])))
                for k, v in computed.keys_values
            ]
        rows = index.to(self._keys_values[0][0].device)
        for (ck, cv), (k, v) in zip(self._keys_values, computed.keys_values):
            ck[rows] = k
            cv[rows] = v
        self._filled[index] = True

    @property
    def filled(self) -> int:
        return int(self._filled.sum())
