"""Inference: deployed versions loaded once onto one backbone, and every task answered per batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from store import TaskStore, VersionInfo

from ..data import InputSpec
from ..errors import ContinualMemError
from ..images import MAX_PIXELS, decode_image
from ..model import MemoryViT
from .backbones import load_backbone


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
    loaded: LoadedTasks, images: Sequence[torch.Tensor], top_k: int = 3, batch_size: int = 64
) -> tuple[list[dict[str, list[Prediction]]], int]:
    """Top-k labels per image (3, H, W) and task; reuse tasks share one backbone pass per batch.

    Each image is resized on its own to the backbone's input (as the server does). Returns the
    answers and the number of backbone passes per batch.
    """
    if batch_size < 1:
        raise ContinualMemError(f"--batch-size must be at least 1, got {batch_size}")
    model = loaded.model.eval()
    answers: list[dict[str, list[Prediction]]] = []
    passes = 0
    for start in range(0, len(images), batch_size):
        out = model.forward_tasks(loaded.spec.batch(images[start : start + batch_size]))
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


def load_image_files(paths: Sequence[Path], max_pixels: int = MAX_PIXELS) -> tuple[list[Path], list[torch.Tensor]]:
    """Image files (directories are searched), each decoded and checked on its own (see `images`)."""
    from ..data import IMAGE_SUFFIXES, DataError

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
    return files, [decode_image(f, str(f), max_pixels) for f in files]
