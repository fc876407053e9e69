"""A validation split carved from a scenario's training data, to choose learning rates on.

`validation_scenario` keeps the scenario's experiences, classes, class order and protocol, but
trains on 80% of each class's training images and tests on the other 20% (`VALIDATION_FRACTION`,
at least one image per class; a seeded choice that depends on `VALIDATION_SEED` only, so every
run seed and every strategy sees the same split). The scenario's test images are never read.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .benchmarks import Scenario
from .errors import ScenarioError

VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0


def carve(labels: Tensor, fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED) -> tuple[Tensor, Tensor]:
    """Indices (train, validation) of `labels`: `fraction` of each class (at least one image, and
    one left to train on when the class has two), chosen with a generator seeded by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique().tolist():
        rows = (labels == label).nonzero(as_tuple=True)[0]
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n_val = min(max(1, round(fraction * len(rows))), max(1, len(rows) - 1))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _training_tensors(scenario: Scenario) -> tuple[Tensor, Tensor]:
    """Every training image (model input) and its original class id, experience by experience."""
    if scenario.details.get("input", {}).get("resized") == "per image, as read":  # type: ignore[union-attr]
        raise ScenarioError(f"{scenario.name}: a validation split needs model input computed once, in memory")
    mapping = scenario.benchmark.class_mapping  # original class id -> the benchmark's id
    images, labels = [], []
    for experience, classes in zip(scenario.benchmark.train_stream, scenario.experience_classes):
        original = {int(mapping[c]): c for c in classes}
        for x, y, _ in experience.dataset:
            images.append(x)
            labels.append(original[int(y)])
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def validation_scenario(scenario: Scenario) -> Scenario:
    """The scenario with its training data split into training and validation (as its test stream)."""
    from avalanche.benchmarks import nc_benchmark
    from torch.utils.data import TensorDataset

    images, labels = _training_tensors(scenario)
    train, val = carve(labels)
    sizes = [len(c) for c in scenario.experience_classes]
    task = scenario.protocol == "task"
    benchmark = nc_benchmark(
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[val], labels[val]),
        n_experiences=scenario.n_experiences,
        task_labels=task,
        shuffle=False,
        fixed_class_order=scenario.class_order,
        per_exp_classes={0: sizes[0]} if len(set(sizes)) > 1 else None,
        class_ids_from_zero_in_each_exp=task,
        class_ids_from_zero_from_first_exp=not task,
    )
    details = {
        **scenario.details,
        "validation": {"fraction": VALIDATION_FRACTION, "seed": VALIDATION_SEED, "of": "training data"},
    }
    return replace(scenario, benchmark=benchmark, train_size=len(train), test_size=len(val), details=details)
