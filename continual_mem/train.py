"""Train and evaluate one task adapter, in one process or under torchrun (DDP over the adapter only).

Under `torchrun --nproc-per-node N`, every rank draws the same seeded permutation and takes its
share of each GLOBAL batch; each rank's loss is scaled so that DDP's gradient average equals the
single-process gradient of the whole batch. N processes therefore follow the single-process run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .model import MemoryViT

GIB = 2**30


@dataclass(frozen=True)
class TrainConfig:
    """How one task is trained. `steps`, when given, overrides `epochs`.

    `lr` is the rate of the memory and class token, `head_lr` the head's (see
    `TaskAdapter.param_groups`).
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

    def __post_init__(self) -> None:
        if self.epochs < 1 and self.steps is None:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and self.head_lr > 0):
            raise ConfigError(f"learning rates must be > 0, got {self.lr} and {self.head_lr} (head)")
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


def _global_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen)
    return list(order.split(batch_size))


def _autocast(config: TrainConfig):
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
) -> TrainResult:
    """Train only `task`'s adapter on model-ready `images` (N, C, H, W); the backbone never changes.

    AdamW over the task's parameters with a cosine learning-rate decay; other tasks are frozen
    for the duration and restored after.
    """
    seed_everything(config.seed)
    device = torch.device(config.device)
    model.to(device)
    params = model.task_parameters(task)
    frozen_before = {n: p.requires_grad for n, p in model.tasks.named_parameters()}
    model.tasks.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    runner: torch.nn.Module = model
    if ctx.world_size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(model)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    groups = model.adapter(task).param_groups(config.lr, config.head_lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    step, epoch = 0, 0
    model.train()
    try:
        while step < total:
            sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
            for batch in _global_batches(n, config.batch_size, epoch, config.seed):
                if step >= total:
                    break
                mine = batch[ctx.rank :: ctx.world_size]
                x, y = images[mine].to(device), labels[mine].to(device)
                with _autocast(config):
                    logits = runner(x, task)
                    loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
                # DDP averages gradients over ranks: scale so the result is the global batch mean.
                loss = loss_sum * ctx.world_size / len(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                step += 1
                sums["loss"] += float(loss_sum.detach())
                sums["correct"] += float((logits.argmax(-1) == y).sum())
                sums["seen"] += len(mine)
                if on_step is not None:
                    on_step(Progress(step, total, epoch, sums["loss"] / sums["seen"], sums["correct"] / sums["seen"]))
            history.append(
                {
                    "epoch": epoch,
                    "loss": sums["loss"] / max(sums["seen"], 1),
                    "accuracy": sums["correct"] / max(sums["seen"], 1),
                }
            )
            epoch += 1
    finally:
        model.eval()
        for name, p in model.tasks.named_parameters():
            p.requires_grad_(frozen_before[name])
    seconds = time.perf_counter() - start
    metrics = {
        "train_loss": history[-1]["loss"],
        "train_accuracy": history[-1]["accuracy"],
        "epochs": float(epoch),
        "steps": float(step),
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epoch, 1),
    }
    if val is not None and val[0].shape[0] > 0:
        result = evaluate_task(
            model, task, val[0], val[1], batch_size=max(config.batch_size, 128), device=config.device
        )
        metrics.update({"val_accuracy": result.accuracy, "val_loss": result.loss})
    return TrainResult(metrics, history)


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
