"""Where the task store and the core meet: what the CLI's commands do, without click.

The core knows no store and the store knows no torch; these functions move weights between them:
backbones are rebuilt from their stored safetensors weights (checked against the recorded
fingerprint), adapters are trained into new versions, and deployed versions are loaded once into
one model that answers all of them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from store import BackboneInfo, TaskStore, VersionInfo

from .adapter import MODES, BackboneIdentity
from .backbone import backbone_config, checkpoint_head_size, create_backbone, fingerprint
from .data import InputSpec, LabeledImages, load_source, split_train_val
from .errors import BackboneMismatchError, ContinualMemError
from .model import MemoryViT
from .pretrain import PretrainConfig, pretrain_backbone, save_backbone
from .train import DistContext, Evaluation, Progress, TrainConfig, evaluate_task, fit_task, seed_everything


# ------------------------------------------------------------------------------------ backbones
def _register(
    store: TaskStore,
    name: str,
    model_name: str,
    model: VisionTransformer,
    model_kwargs: dict[str, Any],
    extra: dict[str, Any],
) -> BackboneInfo:
    """Keep the backbone's weights as a safetensors file, with what rebuilds it (timm name, kwargs)."""
    config = {**backbone_config(model), "model_kwargs": model_kwargs, **extra}
    metadata = {"timm_name": model_name, "model_kwargs": json.dumps(model_kwargs)}
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_backbone(model, Path(tmp) / "weights.safetensors", metadata)
        return store.register_backbone(name, model_name, fingerprint(model), config, weights_file=weights)


def add_backbone(
    store: TaskStore,
    name: str,
    model_name: str,
    weights: Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    random_init: bool = False,
) -> BackboneInfo:
    """Register a timm backbone: hub weights, a local weight file, or (for tests) random weights.

    Whatever the source, the store keeps the weights as one safetensors file.
    """
    kwargs = dict(model_kwargs or {})
    _ensure_new_backbone(store, name)
    if weights is not None and "num_classes" not in kwargs:
        head = checkpoint_head_size(weights)
        if head is not None:
            kwargs["num_classes"] = head
    model = create_backbone(model_name, weights=weights, pretrained=not random_init and weights is None, **kwargs)
    kwargs["num_classes"] = int(model.num_classes)
    source = str(weights) if weights else ("random init" if random_init else "model hub")
    return _register(store, name, model_name, model, kwargs, {"source": source})


def pretrain_and_add_backbone(
    store: TaskStore,
    name: str,
    config: PretrainConfig = PretrainConfig(),
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> BackboneInfo:
    """Pretrain a small ViT here (no hub reaches this machine) and keep it like any backbone."""
    _ensure_new_backbone(store, name)
    model, metrics = pretrain_backbone(config, on_epoch)
    kwargs = {**dict(config.model_kwargs), "num_classes": int(model.num_classes)}
    extra = {"source": f"pretrained here on {config.data}", "pretrain": {**asdict(config), "metrics": metrics}}
    extra["pretrain"]["model_kwargs"] = dict(config.model_kwargs)
    return _register(store, name, config.model_name, model, kwargs, extra)


def _ensure_new_backbone(store: TaskStore, name: str) -> None:
    from store import AlreadyExistsError, NotFoundError

    try:
        store.get_backbone(name)
    except NotFoundError:
        return
    raise AlreadyExistsError(f"backbone {name!r} already exists")


def load_backbone(store: TaskStore, name: str) -> tuple[VisionTransformer, BackboneIdentity]:
    """Rebuild a stored backbone and check its weights are those recorded (sha256 of the tensors)."""
    info = store.get_backbone(name)
    path = store.backbone_weights_path(name)
    if path is None:
        raise ContinualMemError(f"backbone {name!r} has no stored weights")
    model = create_backbone(info.timm_name, weights=path, exact=True, **info.config.get("model_kwargs", {}))
    if fingerprint(model) != info.weights_sha256:
        raise BackboneMismatchError(
            f"backbone {name!r}: the weights rebuilt from {path} do not match the recorded sha256"
        )
    return model.eval(), BackboneIdentity(info.timm_name, info.weights_sha256)


# ------------------------------------------------------------------------------------ training
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


# ------------------------------------------------------------------------------------ serving
@dataclass
class LoadedTasks:
    model: MemoryViT
    versions: dict[str, VersionInfo]
    spec: InputSpec


def load_versions(store: TaskStore, refs: Sequence[str]) -> LoadedTasks:
    """Resolve every reference, load their one backbone once, then every adapter onto it."""
    if not refs:
        raise ContinualMemError("no tasks to load")
    versions = [store.get_version(r) for r in refs]
    backbones = sorted({v.backbone for v in versions})
    if len(backbones) > 1:
        raise ContinualMemError(f"the tasks use different backbones ({', '.join(backbones)}); predict them separately")
    tasks = [v.task for v in versions]
    duplicated = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicated:
        raise ContinualMemError(f"task(s) {', '.join(duplicated)} requested more than once")
    vit, identity = load_backbone(store, backbones[0])
    model = MemoryViT(vit, identity)
    for v in versions:
        model.load_task(v.task, store.artifact_path(v))
    return LoadedTasks(model, {v.task: v for v in versions}, InputSpec.from_backbone(vit))


def deployed_refs(store: TaskStore, alias: str) -> list[str]:
    refs = [e.ref for e in store.deployed(alias)]
    if not refs:
        raise ContinualMemError(f"no task is deployed under alias {alias!r}")
    return refs


@dataclass
class Prediction:
    label: str
    probability: float


@torch.no_grad()
def predict(
    loaded: LoadedTasks, images: torch.Tensor, top_k: int = 3, batch_size: int = 64
) -> tuple[list[dict[str, list[Prediction]]], int]:
    """Top-k labels per image and task; reuse tasks share one backbone pass per batch.

    Returns the answers and the number of backbone passes per batch.
    """
    model = loaded.model.eval()
    answers: list[dict[str, list[Prediction]]] = []
    passes = 0
    for start in range(0, images.shape[0], batch_size):
        out = model.forward_tasks(loaded.spec(images[start : start + batch_size]))
        passes = out.backbone_passes
        per_task = {}
        for task, logits in out.logits.items():
            probs = logits.float().softmax(-1)
            k = min(top_k, probs.shape[1])
            values, index = probs.topk(k, dim=-1)
            names = model.adapter(task).config.class_names
            per_task[task] = [
                [Prediction(names[i], float(p)) for p, i in zip(vs, ix.tolist())] for vs, ix in zip(values, index)
            ]
        for row in range(next(iter(out.logits.values())).shape[0]):
            answers.append({task: preds[row] for task, preds in per_task.items()})
    return answers, passes


def load_image_files(paths: Sequence[Path]) -> tuple[list[Path], torch.Tensor]:
    """Image files (directories are searched) as one (N, 3, S, S) batch in [0, 1]."""
    from .data import IMAGE_SUFFIXES, DataError, read_rgb, stack_square

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"directory {p} holds no images")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image {p} does not exist")
    images = []
    for f in files:
        image = read_rgb(f)
        if image is None:
            raise DataError(f"cannot read image {f}")
        images.append(image)
    return files, stack_square(images)


# ------------------------------------------------------------------------------------ evaluation
def evaluate_version(
    store: TaskStore, ref: str, source: str, skip_bad: bool = False, batch_size: int = 128
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of a version on a data source; stored."""
    from sklearn.metrics import confusion_matrix

    version = store.get_version(ref)
    data = load_task_data(store, version.task, source, skip_bad)
    loaded = load_versions(store, [version.ref])
    result: Evaluation = evaluate_task(loaded.model, version.task, loaded.spec(data.images), data.labels, batch_size)
    labels = list(range(len(data.class_names)))
    matrix = confusion_matrix(result.labels.numpy(), result.predictions.numpy(), labels=labels)
    support = matrix.sum(axis=1)
    per_class = {
        name: (float(matrix[i, i] / support[i]) if support[i] else None) for i, name in enumerate(data.class_names)
    }
    metrics = {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "samples": len(data),
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": data.class_names,
    }
    store.add_evaluation(version, source, json.loads(json.dumps(metrics)))
    return {"version": version.ref, "data": source, **metrics}
