"""Training a task into a new store version: checked first, then trained; failure marks it failed."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from store import TaskStore, VersionInfo

from ..adapter import MODES
from ..data import InputSpec, LabeledImages, load_source, split_train_val
from ..errors import ContinualMemError, Terminated
from ..feature_cache import CachePlan, FeatureCache, plan_cache
from ..images import MAX_PIXELS
from ..model import MemoryViT
from ..train import GIB, DistContext, Progress, TrainConfig, check_training_fits, fit_task, seed_everything
from .backbones import load_backbone


@dataclass(frozen=True)
class TrainRequest:
    task: str
    data: str
    memory: int = 5
    mode: str = "reuse"
    val_split: float = 0.1
    skip_bad: bool = False
    config: TrainConfig = field(default_factory=TrainConfig)
    max_pixels: int = MAX_PIXELS
    cache_gb: float | None = None

    def check(self) -> None:
        if self.memory < 1:
            raise ContinualMemError(f"--memory must be at least 1, got {self.memory}")
        if self.mode not in MODES:
            raise ContinualMemError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def load_task_data(
    store: TaskStore,
    task: str,
    source: str,
    skip_bad: bool = False,
    side: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> LabeledImages:
    """Read a data source and check its classes are the task's, in the same order.

    Images of a folder are resized one by one to `side` (give the backbone's input side).
    """
    classes = store.get_task(task).class_names
    data = load_source(source, skip_bad=skip_bad, side=side, max_pixels=max_pixels)
    if data.class_names != classes:
        raise ContinualMemError(
            f"the classes of {source} ({', '.join(data.class_names)}) are not those of task {task!r} "
            f"({', '.join(classes)})"
        )
    return data


def train_version(
    store: TaskStore,
    request: TrainRequest,
    on_step: Callable[[Progress], None] | None = None,
    ctx: DistContext = DistContext(),
    on_plan: Callable[[CachePlan], None] | None = None,
) -> tuple[VersionInfo | None, dict[str, float]]:
    """Train a new version of a task. Under torchrun every rank reads the store; rank 0 alone writes.

    Everything that can be refused (task, backbone, data, memory size and the memory it needs) is
    checked before the version row is created; after that, any failure, Ctrl-C or SIGTERM marks
    the version `failed`, never half-ready. While it trains, the version's heartbeat says the
    process is alive (a process killed outright stops beating; see `TaskStore.fail_stale`).
    """
    request.check()
    task = store.get_task(request.task)
    vit, identity = load_backbone(store, task.backbone)
    spec = InputSpec.from_backbone(vit)
    data = load_task_data(store, request.task, request.data, request.skip_bad, spec.img_size, request.max_pixels)
    train, val = split_train_val(data, request.val_split, request.config.split_seed)
    model = MemoryViT(vit, identity)
    seed_everything(request.config.seed)  # the new adapter's initial values too: same seed, same result
    model.add_task(
        request.task, len(data.class_names), num_memory=request.memory, mode=request.mode, class_names=data.class_names
    )  # type: ignore[arg-type]
    check_training_fits(model, request.task, request.config)
    plan = cache_plan_for(model, len(train), request.config, request.cache_gb, request.mode == "reuse", ctx.world_size)
    version = None
    if ctx.is_main:
        hyper = {
            **asdict(request.config),
            "val_split": request.val_split,
            "data": request.data,
            "world_size": ctx.world_size,
            "cache": plan.describe(),
        }
        version = store.begin_version(request.task, request.mode, request.memory, hyper, data.fingerprint())
    if on_plan is not None and ctx.is_main:
        on_plan(plan)
    try:
        with store.heartbeat(version) if version is not None else nullcontext():
            result = fit_task(
                model,
                request.task,
                spec(train.images),
                train.labels,
                request.config,
                val=(spec(val.images), val.labels),
                on_step=on_step,
                ctx=ctx,
                cache=FeatureCache(len(train)) if plan.enabled else None,
            )
        metrics = {**result.metrics, "train_samples": len(train), "val_samples": len(val)}
        if version is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = model.save_task(request.task, Path(tmp) / "adapter.safetensors", {"task": request.task})
                version = store.complete_version(version, path, metrics)
        return version, metrics
    except BaseException as exc:
        if version is not None:
            store.fail_version(version, failure_reason(exc))
        raise


def cache_plan_for(
    model: MemoryViT, num_images: int, config: TrainConfig, cache_gb: float | None, reuse: bool, world_size: int = 1
) -> CachePlan:
    """The feature-cache plan of a run of `config` over `num_images` (`cache_gb` None: from free memory)."""
    steps_per_epoch = math.ceil(num_images / config.batch_size)
    epochs = math.ceil(config.steps / steps_per_epoch) if config.steps is not None else config.epochs
    budget = None if cache_gb is None else int(cache_gb * GIB)
    return plan_cache(
        model,
        num_images,
        epochs=epochs,
        budget_bytes=budget,
        reuse_mode=reuse,
        world_size=world_size,
        device=config.device,
    )


def failure_reason(exc: BaseException) -> str:
    """Why a version failed, as kept in the store: `terminated` (SIGTERM), `interrupted` (Ctrl-C), or the error."""
    if isinstance(exc, Terminated):
        return "terminated"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"[:500]
