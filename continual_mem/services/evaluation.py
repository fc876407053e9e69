"""Evaluating a stored version on labelled data; the result is kept in the store."""

from __future__ import annotations

import json
from typing import Any

from store import TaskStore

from ..images import MAX_PIXELS
from ..train import Evaluation, evaluate_task
from .inference import load_versions
from .training import load_task_data


def evaluate_version(
    store: TaskStore,
    ref: str,
    source: str,
    skip_bad: bool = False,
    batch_size: int = 128,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of a version on a data source; stored."""
    from sklearn.metrics import confusion_matrix

    version = store.get_version(ref)
    loaded = load_versions(store, [version.ref])
    data = load_task_data(store, version.task, source, skip_bad, loaded.spec.img_size, max_pixels)
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
