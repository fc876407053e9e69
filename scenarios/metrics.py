"""Metrics: Avalanche's EvaluationPlugin plus what it does not measure.

Their definitions are in `metrics.md` beside this module (shipped with the package, quoted in
docs/results.md by `scenarios.results`): read them with `definitions()`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    bwt_metrics,
    forgetting_metrics,
)
from avalanche.training.plugins import EvaluationPlugin
from timm.layers import PatchEmbed
from torch import Tensor, nn

_EXP_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")
FORGETTING_KEY = "StreamForgetting/eval_phase/test_stream"
BWT_KEY = "StreamBWT/eval_phase/test_stream"
TASK_ID_PREFIX = "TaskIdAcc/eval_phase/test_stream/"


def tasks_of_classes(class_task: Tensor, classes: Tensor) -> Tensor:
    """`class_task[classes]` (class id -> task index), with -1 for ids past the end of the table."""
    table = class_task.to(classes.device)
    tasks = torch.full_like(classes, -1)
    known = classes < len(table)
    tasks[known] = table[classes[known]]
    return tasks


class TaskIdAccuracy(PluginMetric[dict[str, float]]):
    """Class protocol: share of evaluated samples whose task was inferred right.

    The memory model sets `model.last_routes` ({method: (B,) task index}) on each evaluation pass
    and `model.task_of_class`: every routing method is scored. For any other model, the task of
    its predicted class (`argmax`) is scored, given `class_task` (class id -> task index).
    A sample of a class no learned task holds (whole-stream evaluation) counts as wrong: no route
    can give it its own task.
    """

    def __init__(self, class_task: dict[int, int] | None = None) -> None:
        super().__init__()
        self._class_task = None
        if class_task:
            self._class_task = torch.full((max(class_task) + 1,), -1, dtype=torch.long)
            self._class_task[list(class_task)] = torch.tensor(list(class_task.values()))
        self._correct: dict[str, int] = defaultdict(int)
        self._total = 0

    def reset(self) -> None:
        self._correct = defaultdict(int)
        self._total = 0

    def result(self) -> dict[str, float]:
        return {m: c / self._total for m, c in self._correct.items()} if self._total else {}

    def before_eval(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        routes = getattr(strategy.model, "last_routes", None)
        if routes:
            truth = strategy.model.task_of_class(strategy.mb_y)
        elif self._class_task is not None:
            truth = tasks_of_classes(self._class_task, strategy.mb_y)
            routes = {"argmax": tasks_of_classes(self._class_task, strategy.mb_output.argmax(dim=1))}
        else:
            return
        for method, predicted in routes.items():
            self._correct[method] += int(((predicted == truth) & (truth >= 0)).sum())
        self._total += int(truth.shape[0])

    def after_eval(self, strategy) -> list[MetricValue]:
        step = strategy.clock.train_iterations
        return [MetricValue(self, TASK_ID_PREFIX + m, v, step) for m, v in self.result().items()]

    def __str__(self) -> str:
        return "TaskIdAcc"


def definitions() -> str:
    """The metric definitions (markdown), as docs/results.md quotes them."""
    return resources.files("scenarios").joinpath("metrics.md").read_text(encoding="utf-8")


def make_evaluator(class_task: dict[int, int] | None = None) -> EvaluationPlugin:
    """Accuracy per experience and stream, forgetting, BWT and task-id accuracy; no loggers.

    `class_task` (class protocol: class id -> task index) lets any model's task-id accuracy be read.

    Results are read from `strategy.eval(...)`'s return value, so Avalanche's warning that
    nothing will be logged is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            TaskIdAccuracy(class_task),
            loggers=[],
        )


def accuracy_row(metrics: dict[str, float], n_seen: int) -> list[float]:
    """R[i][0..i] from one evaluation's metrics (the experiences seen so far)."""
    found = {int(m.group(1)): float(v) for k, v in metrics.items() if (m := _EXP_ACCURACY.match(k))}
    missing = [j for j in range(n_seen) if j not in found]
    if missing:
        raise KeyError(f"no accuracy for experience(s) {missing} in the evaluation metrics")
    return [found[j] for j in range(n_seen)]


def average_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    return sum(matrix[-1]) / len(matrix[-1])


def task_id_accuracies(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len(TASK_ID_PREFIX) :]: float(v) for k, v in metrics.items() if k.startswith(TASK_ID_PREFIX)}


# ----------------------------------------------------------------------------- backbone passes
def _modules_of(strategy) -> list[nn.Module]:
    """The strategy's model and any other module it holds (e.g. L2P's query ViT)."""
    roots = [strategy.model] + [
        v for v in vars(strategy).values() if isinstance(v, nn.Module) and v is not strategy.model
    ]
    return [m for root in roots for m in root.modules()]


@dataclass
class BackbonePasses:
    """What went through the ViTs' patch embeddings: images (one per backbone pass per image) and
    the sizes (H, W) they had there, i.e. the input size the backbones really got."""

    images: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)


@contextmanager
def count_backbone_passes(modules: Sequence[nn.Module]) -> Iterator[BackbonePasses]:
    """Counts images through every ViT patch embedding, and notes their sizes."""
    passes = BackbonePasses()

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        passes.images += int(inputs[0].shape[0])
        passes.sizes.add((int(inputs[0].shape[-2]), int(inputs[0].shape[-1])))

    handles = [m.register_forward_hook(hook) for m in modules if isinstance(m, PatchEmbed)]
    try:
        yield passes
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def passes_to_serve_all(strategy, images: Tensor, experience) -> BackbonePasses:
    """The backbone passes that produce the answers of EVERY learned task for `images`.

    Multi-task models answer all their tasks through `forward_all_tasks` (one output per task);
    single-head models answer every class at once through the strategy's own forward, which
    needs a current `experience` (L2P reads it).
    """
    from avalanche.models import MultiTaskModule

    strategy.model.eval()
    with count_backbone_passes(_modules_of(strategy)) as passes:
        if isinstance(strategy.model, MultiTaskModule):
            strategy.model.forward_all_tasks(images)
        else:
            zeros = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
            previous = strategy.experience
            strategy.experience, strategy.mbatch = experience, [images, zeros, zeros]
            try:
                strategy.forward()
            finally:
                strategy.experience, strategy.mbatch = previous, None
    return passes


# ----------------------------------------------------------------------------- stored bytes
def _tensor_key(t: Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(
        f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()
    ).hexdigest()


def pretrained_keys(backbone: nn.Module) -> set[str]:
    """Content hashes of the pretrained backbone's tensors: storing those costs nothing extra."""
    return {_tensor_key(t) for t in backbone.state_dict().values()}


def _state_bytes(state: dict[str, Tensor], free: set[str]) -> int:
    seen: set[str] = set()
    total = 0
    for t in state.values():
        key = _tensor_key(t)
        if key not in free and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


@dataclass
class StoredBytes:
    """What a run keeps beyond the pretrained backbone: to serve tasks, and to keep learning."""

    serving: int
    learning: int

    @property
    def total(self) -> int:
        return self.serving + self.learning


def stored_bytes(strategy, free: set[str]) -> StoredBytes:
    """Serving: the model's tensors that differ from the pretrained backbone (adapters, a whole
    fine-tuned ViT, prompts, class means). Learning: what the strategy carries between experiences
    (replay buffer, EWC importances and anchors, LwF's previous model, Cumulative's data).
    """
    serving = _state_bytes(strategy.model.state_dict(), free)
    for module in vars(strategy).values():
        if isinstance(module, nn.Module) and module is not strategy.model:
            serving += _state_bytes(module.state_dict(), free)
    learning = sum(_plugin_learning_bytes(p, free) for p in strategy.plugins)
    dataset = getattr(strategy, "dataset", None)  # Cumulative keeps every training sample
    if dataset is not None:
        learning += _dataset_bytes(dataset)
    return StoredBytes(serving, learning)


def _dataset_bytes(dataset) -> int:
    if len(dataset) == 0:
        return 0
    x = dataset[0][0]
    return len(dataset) * (x.numel() * x.element_size() + 8)  # image + int64 label


def _plugin_learning_bytes(plugin, free: set[str]) -> int:
    name = type(plugin).__name__
    if name == "ReplayPlugin":
        return _dataset_bytes(plugin.storage_policy.buffer)
    if name == "EWCPlugin":
        tensors = [
            p.data
            for group in (plugin.saved_params, plugin.importances)
            for params in group.values()
            for p in params.values()
        ]
        return sum(t.numel() * t.element_size() for t in tensors)
    if name == "LwFPlugin" and plugin.lwf.prev_model is not None:
        return _state_bytes(plugin.lwf.prev_model.state_dict(), free)
    return 0
