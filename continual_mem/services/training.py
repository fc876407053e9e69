"""Training a task into a new store version: checked first, then trained; failure marks it failed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from store import TaskStore, VersionInfo

from ..adapter import MODES
from ..data import InputSpec, LabeledImages, load_source, split_train_val
from ..errors import ContinualMemError
from ..model import MemoryViT
from ..train import DistContext, Progress, TrainConfig, fit_task, seed_everything
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

    def check(self) -> None:
        if self.memory < 1:
            raise ContinualMemError(f"--memory must be at least 1, got {self.memory}")
        if self.mode not in MODES:
            raise ContinualMemError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def load_task_data(store: TaskStore, task: str, source: str, skip_bad: bool = False) -> LabeledImages:
    """Read a data source and check its classes are the task's, in the same order."""
    classes = store.get_task(task).class_names
    data = load_source(source, skip_bad=skip_bad)
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
) -> tuple[VersionInfo | None, dict[str, float]]:
    """Train a new version of a task. Under torchrun every rank reads the store; rank 0 alone writes.

    Everything that can be refused (task, data, backbone) is checked before the version row is
    created; after that, any failure or Ctrl-C marks the version `failed`, never half-ready.
    """
    request.check()
    task = store.get_task(request.task)
    data = load_task_data(store, request.task, request.data, request.skip_bad)
    vit, identity = load_backbone(store, task.backbone)
    train, val = split_train_val(data, request.val_split, request.config.seed)
    spec = InputSpec.from_backbone(vit)
    model = MemoryViT(vit, identity)
    seed_everything(request.config.seed)  # the new adapter's initial values too: same seed, same result
    model.add_task(
        request.task, len(data.class_names), num_memory=request.memory, mode=request.mode, class_names=data.class_names
    )  # type: ignore[arg-type]
    version = None
    if ctx.is_main:
        hyper = {
            **asdict(request.config),
            "val_split": request.val_split,
            "data": request.data,
            "world_size": ctx.world_size,
        }
        version = store.begin_version(request.task, request.mode, request.memory, hyper, data.fingerprint())
    try:
        result = fit_task(
            model,
            request.task,
            spec(train.images),
            train.labels,
            request.config,
            val=(spec(val.images), val.labels),
            on_step=on_step,
            ctx=ctx,
        )
        metrics = {**result.metrics, "train_samples": len(train), "val_samples": len(val)}
        if version is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = model.save_task(request.task, Path(tmp) / "adapter.safetensors", {"task": request.task})
                version = store.complete_version(version, path, metrics)
        return version, metrics
    except BaseException as exc:
        if version is not None:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            store.fail_version(version, reason[:500])
        raise
