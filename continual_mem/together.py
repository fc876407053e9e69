"""Train several task adapters on the same images with one backbone pass per step.

Reuse-mode tasks never see each other: each task's class token attends to the frozen backbone's
keys/values and to its own memory only. K adapters trained on the same images can therefore
share one `BackbonePass` per step; the step backpropagates the sum of their losses, which gives
each adapter exactly its own gradient, and each adapter keeps its own optimizer state, gradient
clipping, learning-rate schedule and early stopping. With `exact=True` every task's attention is
its own kernel call and the row-wise layers run as one GEMM over all tasks' rows only where a
probe finds it rounds each row as alone (else once per task), so training K together gives bit
for bit the adapters of training each alone with the same seed and data order (`fit_task` is the
K = 1 case).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .feature_cache import FeatureCache
from .model import MemoryViT
from .train import (
    DistContext,
    Evaluation,
    Progress,
    TrainConfig,
    TrainResult,
    autocast,
    check_training_fits,
    cosine_factor,
    global_batches,
)


@dataclass(frozen=True)
class Member:
    """One adapter of a together-run: its task, its labels of the shared images, how it trains."""

    task: str
    labels: Tensor
    config: TrainConfig
    val_labels: Tensor | None = None


SHARED_FIELDS = ("batch_size", "batch_order_seed", "device", "amp")


def check_together(model: MemoryViT, members: Sequence[Member], num_images: int) -> None:
    """Refuse what cannot train in one pass: no task, a task twice, full mode beside others,
    labels that are not of the shared images, or settings the shared batches must agree on."""
    if not members:
        raise ConfigError("no task to train: give at least one")
    names = [m.task for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"task(s) {', '.join(repeated)} given more than once")
    for m in members:
        adapter = model.adapter(m.task)
        if adapter.mode == "full" and len(members) > 1:
            raise ConfigError(
                f"task {m.task!r} is in full mode: its memory changes every backbone token, so it trains in its own pass"
            )
        if m.labels.shape[0] != num_images:
            raise ConfigError(f"task {m.task!r} has {m.labels.shape[0]} labels for {num_images} images")
    first = members[0].config
    for m in members[1:]:
        for name in SHARED_FIELDS:
            if getattr(m.config, name) != getattr(first, name):
                raise ConfigError(
                    f"tasks trained together share their batches: {name} of {m.task!r} is"
                    f" {getattr(m.config, name)!r}, of {members[0].task!r} {getattr(first, name)!r}"
                )


@dataclass
class _Run:
    """One adapter's training state inside a together-run."""

    member: Member
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    total: int
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    best: tuple[float, int, dict[str, Tensor]] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    done: bool = False

    @property
    def task(self) -> str:
        return self.member.task

    def epoch_means(self) -> tuple[float, float]:
        seen = max(self.sums.get("seen", 0.0), 1.0)
        return self.sums.get("loss", 0.0) / seen, self.sums.get("correct", 0.0) / seen


def _new_run(model: MemoryViT, member: Member, steps_per_epoch: int) -> _Run:
    config = member.config
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    groups = model.adapter(member.task).param_groups(config.lr, config.head_lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total))
    return _Run(member, model.task_parameters(member.task), optimizer, schedule, total)


def task_logits(model: MemoryViT, x: Tensor, index: Tensor, tasks: list[str], cache: FeatureCache | None, exact: bool):
    """Logits of `tasks` on images x (rows `index` of the training images): one backbone pass, or the cache."""
    if len(tasks) == 1 and model.adapter(tasks[0]).mode == "full":
        return {tasks[0]: model.forward_full(x, tasks[0])}
    backbone = cache.get(index) if cache is not None else None
    if backbone is None:
        backbone = model.backbone_pass(x)
        if cache is not None:
            cache.put(index, backbone)
    return model.reuse_outputs(backbone, tasks, exact)


def fit_together(
    model: MemoryViT,
    members: Sequence[Member],
    images: Tensor,
    val_images: Tensor | None = None,
    on_step: Callable[[Progress], None] | None = None,
    on_done: Callable[[str, TrainResult], None] | None = None,
    ctx: DistContext = DistContext(),
    exact: bool = True,
    cache: FeatureCache | None = None,
) -> dict[str, TrainResult]:
    """Train every member's adapter on model-ready `images` (N, C, H, W); the backbone never changes.

    AdamW per adapter with a cosine decay over its own steps; its gradient norm clipped to its
    `clip_grad_norm`; with `patience` and validation data, it stops after that many epochs
    without a better validation accuracy and keeps its best epoch's weights. A finished adapter
    leaves the pass and `on_done(task, result)` is called at once. Other tasks are frozen for the
    duration and restored after. Under torchrun every rank takes its share of each global batch
    and the adapters' gradients are summed over ranks.
    """
    check_together(model, members, images.shape[0])
    for m in members:
        check_training_fits(model, m.task, m.config)
    first = members[0].config
    device = torch.device(first.device)
    model.to(device)
    frozen_before = {n: p.requires_grad for n, p in model.tasks.named_parameters()}
    model.tasks.requires_grad_(False)
    steps_per_epoch = math.ceil(images.shape[0] / first.batch_size)
    for m in members:
        for p in model.task_parameters(m.task):
            p.requires_grad_(True)
            if ctx.world_size > 1:
                dist.broadcast(p.data, 0)
    runs = [_new_run(model, m, steps_per_epoch) for m in members]
    scaler = torch.amp.GradScaler("cuda", enabled=first.amp and device.type == "cuda")
    results: dict[str, TrainResult] = {}
    start = time.perf_counter()
    epoch = 0
    model.train()
    try:
        while not all(r.done for r in runs):
            active = [r for r in runs if not r.done]
            for r in active:
                r.sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
            for batch in global_batches(images.shape[0], first.batch_size, epoch, first.batch_order_seed):
                live = [r for r in active if r.step < r.total]
                if not live:
                    break
                _step(model, live, images, batch, ctx, scaler, cache, exact)
                if on_step is not None:
                    on_step(_progress(runs, live, epoch))
            finished = _end_epoch(model, active, epoch, val_images)
            epoch += 1
            seconds = time.perf_counter() - start
            if finished:
                _finish(model, finished, val_images, epoch, seconds, results, on_done)
    finally:
        model.eval()
        for name, p in model.tasks.named_parameters():
            p.requires_grad_(frozen_before[name])
    return results


def _step(
    model: MemoryViT,
    live: list[_Run],
    images: Tensor,
    batch: Tensor,
    ctx: DistContext,
    scaler: torch.amp.GradScaler,
    cache: FeatureCache | None,
    exact: bool,
) -> None:
    """One optimizer step of every live adapter over one shared backbone pass."""
    config = live[0].member.config
    device = torch.device(config.device)
    mine = batch[ctx.rank :: ctx.world_size]
    x = images[mine].to(device)
    with autocast(config):
        logits = task_logits(model, x, mine, [r.task for r in live], cache, exact)
    total = None
    for r in live:
        y = r.member.labels[mine].to(device)
        loss_sum = F.cross_entropy(logits[r.task].float(), y, reduction="sum")
        loss = loss_sum / len(batch)  # summed over ranks below: the mean over the global batch
        total = loss if total is None else total + loss
        r.sums["loss"] += float(loss_sum.detach())
        r.sums["correct"] += float((logits[r.task].argmax(-1) == y).sum())
        r.sums["seen"] += len(mine)
        r.optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    for r in live:
        if ctx.world_size > 1:
            for p in r.params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        if r.member.config.clip_grad_norm is not None:
            scaler.unscale_(r.optimizer)
            torch.nn.utils.clip_grad_norm_(r.params, r.member.config.clip_grad_norm)
        scaler.step(r.optimizer)
        r.schedule.step()
        r.step += 1
    scaler.update()


def _progress(runs: list[_Run], live: list[_Run], epoch: int) -> Progress:
    per_task = {r.task: r.epoch_means() for r in live}
    loss = sum(v[0] for v in per_task.values()) / len(per_task)
    accuracy = sum(v[1] for v in per_task.values()) / len(per_task)
    step = max(r.step for r in runs)
    return Progress(step, max(r.total for r in runs), epoch, loss, accuracy, per_task)


def _end_epoch(model: MemoryViT, active: list[_Run], epoch: int, val_images: Tensor | None) -> list[_Run]:
    """Record the epoch; early stopping on validation accuracy; the runs that are done."""
    watched = [r for r in active if r.member.config.patience is not None and r.member.val_labels is not None]
    scores = _val_scores(model, watched, val_images) if watched and val_images is not None else {}
    finished = []
    for r in active:
        loss, accuracy = r.epoch_means()
        r.history.append({"epoch": epoch, "loss": loss, "accuracy": accuracy})
        if r.task in scores:
            r.history[-1]["val_accuracy"] = scores[r.task]
            if r.best is None or scores[r.task] > r.best[0]:
                state = {k: v.detach().clone() for k, v in model.adapter(r.task).state_dict().items()}
                r.best, r.bad_epochs = (scores[r.task], epoch, state), 0
            else:
                r.bad_epochs += 1
                r.stopped_early = r.bad_epochs >= r.member.config.patience  # type: ignore[operator]
        if r.step >= r.total or r.stopped_early:
            if r.best is not None:
                model.adapter(r.task).load_state_dict(r.best[2])
            r.done = True
            finished.append(r)
    return finished


def _val_scores(model: MemoryViT, runs: list[_Run], val_images: Tensor) -> dict[str, float]:
    labels = {r.task: r.member.val_labels for r in runs}
    config = runs[0].member.config
    found = evaluate_tasks(model, labels, val_images, max(config.batch_size, 128), config.device)  # type: ignore[arg-type]
    model.train()
    return {name: e.accuracy for name, e in found.items()}


def _finish(
    model: MemoryViT,
    finished: list[_Run],
    val_images: Tensor | None,
    epochs: int,
    seconds: float,
    results: dict[str, TrainResult],
    on_done: Callable[[str, TrainResult], None] | None,
) -> None:
    """Metrics of the adapters that just finished (validation included), then `on_done` for each."""
    with_val = [r for r in finished if r.member.val_labels is not None and r.member.val_labels.numel() > 0]
    evaluations: dict[str, Evaluation] = {}
    if with_val and val_images is not None:
        config = with_val[0].member.config
        labels = {r.task: r.member.val_labels for r in with_val}
        evaluations = evaluate_tasks(model, labels, val_images, max(config.batch_size, 128), config.device)  # type: ignore[arg-type]
        model.train()
    for r in finished:
        metrics = {
            "train_loss": r.history[-1]["loss"],
            "train_accuracy": r.history[-1]["accuracy"],
            "epochs": float(len(r.history)),
            "steps": float(r.step),
            "train_seconds": seconds,
            "seconds_per_epoch": seconds / max(epochs, 1),
        }
        if r.best is not None:
            metrics.update({"best_epoch": float(r.best[1]), "stopped_early": float(r.stopped_early)})
        if r.task in evaluations:
            metrics.update({"val_accuracy": evaluations[r.task].accuracy, "val_loss": evaluations[r.task].loss})
        results[r.task] = TrainResult(metrics, r.history)
        if on_done is not None:
            on_done(r.task, results[r.task])


@torch.no_grad()
def evaluate_tasks(
    model: MemoryViT,
    labels: dict[str, Tensor],
    images: Tensor,
    batch_size: int = 128,
    device: str = "cpu",
    exact: bool = True,
) -> dict[str, Evaluation]:
    """Accuracy and loss of each task on its labels of the same `images`: one backbone pass per batch
    for all reuse-mode tasks (the training path's numbers), one more per full-mode task."""
    model.eval()
    names = list(labels)
    if images.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return {n: Evaluation(float("nan"), float("nan"), empty, labels[n]) for n in names}
    reuse = [n for n in names if model.adapter(n).mode == "reuse"]
    chunks: dict[str, list[Tensor]] = {n: [] for n in names}
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        if reuse:
            for name, logits in model.reuse_outputs(model.backbone_pass(x), reuse, exact).items():
                chunks[name].append(logits.float().cpu())
        for name in names:
            if name not in reuse:
                chunks[name].append(model.forward_full(x, name).float().cpu())
    found = {}
    for name in names:
        logits, y = torch.cat(chunks[name]), labels[name]
        predictions = logits.argmax(-1)
        loss = float(F.cross_entropy(logits, y)) if y.numel() else float("nan")
        accuracy = float((predictions == y).float().mean()) if y.numel() else float("nan")
        found[name] = Evaluation(accuracy, loss, predictions, y)
    return found
