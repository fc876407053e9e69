"""Several versions trained in one backbone pass per step: tasks labelled on the same images, and sweeps.

`train_together` trains tasks A, B, C on the same images (each task's labels from its own data
source, checked to be the same images); `sweep` trains every (memory, learning rate, seed)
variant of one task. Reuse-mode variants share one pass (`together.fit_together`); full-mode
variants each run in their own. Every variant is a store version opened before training starts:
a finished variant is completed at once (`ready`), and on a failure, Ctrl-C or SIGTERM every
unfinished one is marked `failed`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from store import TaskStore, VersionInfo
from store.liveness import Heartbeat

from ..adapter import MODES
from ..data import InputSpec, LabeledImages, split_indices
from ..errors import ConfigError
from ..feature_cache import CachePlan, FeatureCache
from ..images import MAX_PIXELS
from ..model import MemoryViT
from ..together import Member, fit_together
from ..train import Progress, TrainConfig, TrainResult, check_training_fits, seed_everything
from .backbones import load_backbone
from .training import cache_plan_for, failure_reason, load_task_data


@dataclass(frozen=True)
class Variant:
    """One version to train: its task, memory size, token learning rate, initialisation seed and mode."""

    task: str
    memory: int
    lr: float
    seed: int
    mode: str = "reuse"

    @property
    def label(self) -> str:
        return f"{self.task} m={self.memory} lr={self.lr:g} seed={self.seed}"


@dataclass(frozen=True)
class Options:
    """What every variant of a run shares: data handling, the base training config, the cache budget."""

    val_split: float = 0.1
    skip_bad: bool = False
    config: TrainConfig = field(default_factory=TrainConfig)
    max_pixels: int = MAX_PIXELS
    cache_gb: float | None = None


@dataclass
class Outcome:
    """A trained (or refused) variant: its version and metrics."""

    variant: Variant
    version: VersionInfo
    metrics: dict[str, float]


@dataclass
class RunReport:
    """What a together-run did: each variant's outcome, which variants shared a pass, the cache plans."""

    outcomes: list[Outcome]
    passes: list[list[Variant]]
    cache: list[CachePlan]
    best: Outcome | None = None


# ------------------------------------------------------------------------------------ checks
def check_cache_gb(text: str | None) -> float | None:
    """`--cache-gb` as a number of GiB (>= 0), or None for the default."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--cache-gb must be a number of GiB, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"--cache-gb must be a finite number >= 0, got {text!r}")
    return value


def sweep_variants(task: str, memories: Sequence[int], lrs: Sequence[float], seeds: Sequence[int], mode: str):
    """Every (memory, lr, seed) of one task, refused when a list is empty, a value bad or repeated."""
    for name, values in (("--memory", memories), ("--lr", lrs), ("--seeds", seeds)):
        if not values:
            raise ConfigError(f"{name} gives no value: a sweep needs at least one variant")
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise ConfigError(f"duplicated variant: {name} lists {repeated[0]:g} more than once")
    bad_memory = [m for m in memories if m < 1]
    if bad_memory:
        raise ConfigError(f"--memory must be at least 1, got {bad_memory[0]}")
    bad_lr = [r for r in lrs if not (r > 0 and math.isfinite(r))]
    if bad_lr:
        raise ConfigError(f"--lr must be positive finite numbers, got {bad_lr[0]}")
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return [Variant(task, m, r, s, mode) for m, r, s in itertools.product(memories, lrs, seeds)]


def check_same_backbone(store: TaskStore, tasks: Sequence[str]) -> str:
    """The one backbone of `tasks`; refused when they grow on different ones."""
    backbones = {t: store.get_task(t).backbone for t in tasks}
    names = sorted(set(backbones.values()))
    if len(names) > 1:
        listed = ", ".join(f"{t} on {b}" for t, b in backbones.items())
        raise ConfigError(f"tasks trained together share one backbone pass; these are on different backbones: {listed}")
    return names[0]


# ------------------------------------------------------------------------------------ data
def _image_keys(images: Tensor) -> list[bytes]:
    return [hashlib.sha256(image.numpy().tobytes()).digest() for image in images]


def aligned_labels(base: LabeledImages, other: LabeledImages, names: tuple[str, str]) -> Tensor:
    """`other`'s labels in `base`'s image order; refused unless both hold the same images."""
    if other.images.shape == base.images.shape and torch.equal(other.images, base.images):
        return other.labels
    if other.images.shape != base.images.shape:
        raise ConfigError(
            f"tasks trained together must label the same images: {other.source} (task {names[1]}) gives"
            f" {len(other)} images of {tuple(other.images.shape[1:])}, {base.source} (task {names[0]})"
            f" {len(base)} of {tuple(base.images.shape[1:])}"
        )
    where: dict[bytes, list[int]] = {}
    for i, key in enumerate(_image_keys(other.images)):
        where.setdefault(key, []).append(i)
    order = []
    for key in _image_keys(base.images):
        if not where.get(key):
            raise ConfigError(
                f"tasks trained together must label the same images: {other.source} (task {names[1]}) gives"
                f" other images than {base.source} (task {names[0]})"
            )
        order.append(where[key].pop())
    return other.labels[torch.tensor(order)]


def load_shared(
    store: TaskStore, tasks: Sequence[str], sources: Sequence[str], options: Options, side: int
) -> tuple[LabeledImages, list[Tensor]]:
    """The images the tasks share (the first task's order) and each task's labels of them."""
    loaded: dict[str, LabeledImages] = {}
    datas = []
    for task, source in zip(tasks, sources):
        if source not in loaded:
            loaded[source] = load_task_data(store, task, source, options.skip_bad, side, options.max_pixels)
        data = loaded[source]
        if data.class_names != store.get_task(task).class_names:
            load_task_data(store, task, source, options.skip_bad, side, options.max_pixels)  # raises the class error
        datas.append(data)
    base = datas[0]
    return base, [aligned_labels(base, d, (tasks[0], t)) for d, t in zip(datas, tasks)]


# ------------------------------------------------------------------------------------ training
def train_together(
    store: TaskStore,
    tasks: Sequence[str],
    sources: Sequence[str],
    memory: int,
    options: Options,
    on_step: Callable[[Progress], None] | None = None,
    on_plan: Callable[[CachePlan], None] | None = None,
) -> RunReport:
    """Train a new version of each task in `tasks`, on the same images, in one pass per step."""
    if not tasks:
        raise ConfigError("no task to train: give at least one")
    repeated = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if repeated:
        raise ConfigError(f"duplicated variant: task {repeated[0]} is given more than once")
    if len(sources) not in (1, len(tasks)):
        raise ConfigError(f"give one --data for all tasks or one per task ({len(tasks)}), not {len(sources)}")
    if memory < 1:
        raise ConfigError(f"--memory must be at least 1, got {memory}")
    check_same_backbone(store, tasks)
    sources = list(sources) * len(tasks) if len(sources) == 1 else list(sources)
    variants = [Variant(t, memory, options.config.lr, options.config.seed) for t in tasks]
    return _run(store, variants, sources, options, on_step, on_plan)


def sweep(
    store: TaskStore,
    task: str,
    source: str,
    variants: Sequence[Variant],
    options: Options,
    on_step: Callable[[Progress], None] | None = None,
    on_plan: Callable[[CachePlan], None] | None = None,
    deploy_best: str | None = None,
) -> RunReport:
    """Train every variant of `task`, rank them on validation accuracy, tag the best `best=true`.

    Variants see the same split and batches in the same order (`--seed`); their own seeds vary
    only their initialisation. `deploy_best` names an alias to point at the best version.
    """
    store.get_task(task)
    if deploy_best is not None and options.val_split == 0:
        raise ConfigError("--deploy-best ranks variants on validation accuracy: give a --val-split above 0")
    report = _run(store, list(variants), [source] * len(variants), options, on_step, on_plan)
    ranked = sorted(report.outcomes, key=_rank_key)
    report.outcomes = ranked
    if ranked and "val_accuracy" in ranked[0].metrics:
        report.best = ranked[0]
        for v in store.list_versions(task):
            if v.tags.get("best") == "true":
                store.remove_tag(task, "best", version=v.number)
        store.set_tag(task, "best", "true", version=ranked[0].version.number)
        if deploy_best is not None:
            store.set_alias(task, deploy_best, ranked[0].version.number)
        report.best.version = store.get_version(ranked[0].version.ref)
    return report


def _rank_key(outcome: Outcome) -> tuple[float, float]:
    accuracy = outcome.metrics.get("val_accuracy", float("nan"))
    loss = outcome.metrics.get("val_loss", float("nan"))
    return (-accuracy if accuracy == accuracy else math.inf, loss if loss == loss else math.inf)


def _run(
    store: TaskStore,
    variants: list[Variant],
    sources: list[str],
    options: Options,
    on_step: Callable[[Progress], None] | None,
    on_plan: Callable[[CachePlan], None] | None,
) -> RunReport:
    """Everything checked and prepared first; then the versions open and the passes train."""
    base = options.config
    vit, identity = load_backbone(store, check_same_backbone(store, [v.task for v in variants]))
    spec = InputSpec.from_backbone(vit)
    tasks = [v.task for v in variants]
    data, labels = load_shared(store, tasks, sources, options, spec.img_size)
    train_idx, val_idx = split_indices(labels[0], len(data.class_names), options.val_split, base.split_seed)
    model = MemoryViT(vit, identity)
    members = []
    for i, (variant, task_labels) in enumerate(zip(variants, labels)):
        seed_everything(variant.seed)  # each adapter's initial values: the same as training it alone
        names = store.get_task(variant.task).class_names
        model.add_task(f"v{i}", len(names), num_memory=variant.memory, mode=variant.mode, class_names=names)  # type: ignore[arg-type]
        config = replace(
            base, lr=variant.lr, seed=variant.seed, data_seed=base.split_seed, order_seed=base.batch_order_seed
        )
        members.append(Member(f"v{i}", task_labels[train_idx], config, task_labels[val_idx]))
        check_training_fits(model, f"v{i}", config)
    passes = [[i for i, v in enumerate(variants) if v.mode == "reuse"]]
    passes = [p for p in passes if p] + [[i] for i, v in enumerate(variants) if v.mode != "reuse"]
    images, val_images = spec(data.images[train_idx]), spec(data.images[val_idx])
    plans = [
        cache_plan_for(model, images.shape[0], base, options.cache_gb, variants[p[0]].mode == "reuse") for p in passes
    ]
    versions = _begin(store, variants, sources, options, data.fingerprint(), plans, passes)
    shown = _short_names(variants)

    def progress(p: Progress) -> None:
        if on_step is not None:
            on_step(replace(p, tasks={shown[int(k[1:])]: v for k, v in p.tasks.items()}))

    outcomes: dict[int, Outcome] = {}
    try:
        with Heartbeat(lambda: [store.beat(versions[i]) for i in range(len(variants)) if i not in outcomes]):
            for group, plan in zip(passes, plans):
                if on_plan is not None:
                    on_plan(plan)

                def done(name: str, result: TrainResult) -> None:
                    i = int(name[1:])
                    outcomes[i] = _complete(store, model, name, versions[i], variants[i], result, data, val_idx)

                fit_together(
                    model,
                    [members[i] for i in group],
                    images,
                    val_images,
                    on_step=progress,
                    on_done=done,
                    cache=FeatureCache(images.shape[0]) if plan.enabled else None,
                )
    except BaseException as exc:
        for i, version in enumerate(versions):
            if i not in outcomes:
                store.fail_version(version, failure_reason(exc))
        raise
    return RunReport([outcomes[i] for i in range(len(variants))], [[variants[i] for i in p] for p in passes], plans)


def _short_names(variants: list[Variant]) -> list[str]:
    """How the progress bar names each variant: its task, or what sets it apart from the others."""
    if len({v.task for v in variants}) == len(variants):
        return [v.task for v in variants]
    seeds = len({v.seed for v in variants}) > 1
    return [f"m{v.memory},lr{v.lr:g}" + (f",s{v.seed}" if seeds else "") for v in variants]


def _begin(
    store: TaskStore,
    variants: list[Variant],
    sources: list[str],
    options: Options,
    fingerprint: str,
    plans: list[CachePlan],
    passes: list[list[int]],
) -> list[VersionInfo]:
    """Open every variant's version (status `training`), with what it was trained with."""
    plan_of = {i: plan for plan, group in zip(plans, passes) for i in group}
    versions = []
    for i, (variant, source) in enumerate(zip(variants, sources)):
        config = replace(options.config, lr=variant.lr, seed=variant.seed)
        group = next(g for g in passes if i in g)
        hyper = {
            **asdict(config),
            "val_split": options.val_split,
            "data": source,
            "world_size": 1,
            "trained_together": [variants[j].label for j in group],
            "cache": plan_of[i].describe(),
        }
        versions.append(store.begin_version(variant.task, variant.mode, variant.memory, hyper, fingerprint))
    return versions


def _complete(
    store: TaskStore,
    model: MemoryViT,
    name: str,
    version: VersionInfo,
    variant: Variant,
    result: TrainResult,
    data: LabeledImages,
    val_idx: Tensor,
) -> Outcome:
    metrics = {**result.metrics, "train_samples": len(data) - len(val_idx), "val_samples": len(val_idx)}
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save_task(name, Path(tmp) / "adapter.safetensors", {"task": variant.task})
        version = store.complete_version(version, path, metrics)
    return Outcome(variant, version, metrics)
