"""Train and evaluate one task adapter, in one process or under torchrun (data parallel over the adapter only).

Under `torchrun --nproc-per-node N`, every rank draws the same seeded permutation and takes its
share of each GLOBAL batch; each rank's loss is its share of the global batch mean and the
adapter's gradients are summed over ranks, so N processes follow the single-process run. The
training loop itself is `together.fit_together` (one task is the K = 1 case).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .model import MemoryViT

if TYPE_CHECKING:
    from .feature_cache import FeatureCache

GIB = 2**30


@dataclass(frozen=True)
class TrainConfig:
    """How one task is trained. `steps`, when given, overrides `epochs`.

    `lr` is the rate of the memory and class token, `head_lr` the head's (see
    `TaskAdapter.param_groups`). `seed` initialises the adapter; `data_seed` draws the
    train/validation split and `order_seed` the batch order (both default to `seed`), so variants
    with different seeds can still see the same data in the same order. `clip_grad_norm` clips
    the adapter's gradient norm; `patience` stops after that many epochs without a better
    validation accuracy and keeps the best epoch's weights.
    """

    epochs: int = 10
    steps: int | None = None
    lr: float = 3e-3
    head_lr: float = 3e-2
    weight_decay: float = 0.0
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    data_seed: int | None = None
    order_seed: int | None = None
    clip_grad_norm: float | None = None
    patience: int | None = None

    @property
    def split_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def batch_order_seed(self) -> int:
        return self.seed if self.order_seed is None else self.order_seed

    def __post_init__(self) -> None:
        if self.epochs < 1 and self.steps is None:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not all(r > 0 and math.isfinite(r) for r in (self.lr, self.head_lr)):
            raise ConfigError(f"learning rates must be > 0 and finite, got {self.lr} and {self.head_lr} (head)")
        if self.clip_grad_norm is not None and not (self.clip_grad_norm > 0 and math.isfinite(self.clip_grad_norm)):
            raise ConfigError(f"--clip-grad must be a positive finite number, got {self.clip_grad_norm}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"--patience must be at least 1 epoch, got {self.patience}")
        check_device(self.device)


def check_device(device: str) -> torch.device:
    """The torch device `device` names; refused with the reason when it does not exist here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not a device torch knows (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA device is available here")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: continual-mem trains on cpu, cuda or mps")
    return parsed


def training_bytes(depth: int, num_memory: int, dim: int, tokens: int, heads: int, batch_size: int, mode: str) -> int:
    """A rough upper estimate of what one training step holds in memory (float32), in bytes.

    The adapter with its gradient and two Adam moments, and the activations autograd keeps: in full
    mode every block's attention maps over image and memory tokens; in reuse mode the backbone runs
    without autograd and only the task token's attention is kept.
    """
    adapter = 4 * depth * num_memory * dim
    keys = tokens + num_memory + 1
    if mode == "full":
        activations = depth * batch_size * (3 * heads * tokens * keys + 12 * tokens * dim)
    else:
        activations = batch_size * 12 * tokens * dim + depth * batch_size * (2 * tokens * dim + 3 * heads * keys)
    return 4 * (adapter + activations)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for a new allocation on `device` (None when it cannot be told)."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return pages * os.sysconf("SC_PAGE_SIZE") if pages else None


def check_memory_fits(
    depth: int,
    num_memory: int,
    dim: int,
    tokens: int,
    heads: int,
    batch_size: int,
    mode: str,
    device: str = "cpu",
) -> None:
    """Refuse a training run that could not fit in the memory available, before it starts."""
    need = training_bytes(depth, num_memory, dim, tokens, heads, batch_size, mode)
    free = available_bytes(device)
    if free is not None and need > free:
        raise ConfigError(
            f"training with {num_memory} memory tokens per layer ({mode} mode, batch {batch_size}) needs about"
            f" {need / GIB:.1f} GiB on {device}, and {free / GIB:.1f} GiB are available: use fewer memory tokens"
            " or a smaller batch size"
        )


def check_training_fits(model: MemoryViT, task: str, config: TrainConfig) -> None:
    """`check_memory_fits` for `task` of `model` trained with `config`."""
    adapter = model.adapter(task)
    heads = int(model.backbone.blocks[0].attn.num_heads)
    check_memory_fits(
        model.depth,
        adapter.num_memory,
        model.dim,
        model.tokens_per_image,
        heads,
        config.batch_size,
        adapter.mode,
        config.device,
    )


@dataclass
class Progress:
    """What a progress callback sees after every optimizer step."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    accuracy: float
    tasks: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Each task's running (loss, accuracy) over the epoch, when several train together."""


@dataclass
class TrainResult:
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class DistContext:
    """This process's rank and the world size (1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the torchrun process group when launched by torchrun, else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def global_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[Tensor]:
    """The batches of one epoch: a permutation drawn from (`seed`, `epoch`) alone, the same on every rank."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen)
    return list(order.split(batch_size))


def autocast(config: TrainConfig):
    if not config.amp:
        return nullcontext()
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device_type, dtype=dtype)


def cosine_factor(step: int, total: int) -> float:
    """The learning-rate multiplier of a cosine decay from 1 (step 0) to 0 (step `total` and after)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def fit_task(
    model: MemoryViT,
    task: str,
    images: Tensor,
    labels: Tensor,
    config: TrainConfig,
    val: tuple[Tensor, Tensor] | None = None,
    on_step: Callable[[Progress], None] | None = None,
    ctx: DistContext = DistContext(),
    cache: FeatureCache | None = None,
) -> TrainResult:
    """Train only `task`'s adapter on model-ready `images` (N, C, H, W); the backbone never changes.

    The one-task case of `together.fit_together` (AdamW over the task's parameters, cosine
    decay; other tasks frozen for the duration and restored after).
    """
    from .together import Member, fit_together

    val_images, val_labels = val if val is not None and val[0].shape[0] > 0 else (None, None)
    member = Member(task, labels, config, val_labels)
    return fit_together(model, [member], images, val_images, on_step=on_step, ctx=ctx, cache=cache)[task]


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    predictions: Tensor
    labels: Tensor


@torch.no_grad()
def predict_logits(model: MemoryViT, task: str, images: Tensor, batch_size: int = 128, device: str = "cpu") -> Tensor:
    model.eval()
    outs = [
        model(images[i : i + batch_size].to(device), task).float().cpu() for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(outs)


def evaluate_task(
    model: MemoryViT, task: str, images: Tensor, labels: Tensor, batch_size: int = 128, device: str = "cpu"
) -> Evaluation:
    logits = predict_logits(model, task, images, batch_size, device)
    loss = float(F.cross_entropy(logits, labels)) if labels.numel() else float("nan")
    predictions = logits.argmax(-1)
    accuracy = float((predictions == labels).float().mean()) if labels.numel() else float("nan")
    return Evaluation(accuracy, loss, predictions, labels)
