"""Baselines on the same backbone, data, budget and seeds, built from Avalanche's own parts.

* Naive, EWC, LwF, Replay, Cumulative: Avalanche's strategies fine-tuning a copy of the whole
  backbone, with Avalanche's `MultiHeadClassifier` (task protocol) or `IncrementalClassifier`
  (class protocol) on its pooled features.
* Per-task full fine-tuning (`PerTaskFineTune`): a fresh copy of the pretrained backbone and a
  head per task; nothing is forgotten, but serving T tasks costs T backbone passes and T models.
* NCM: nearest class mean (scikit-learn's `NearestCentroid`) on the frozen backbone's L2-normalised
  features; no SGD.
* L2P lives in `scenarios.l2p`; head-only / head+class / memory m in `scenarios.strategy`.

The registry (`scenarios.strategies`) builds them; their hyper-parameters are set there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from avalanche.models import IncrementalClassifier, MultiHeadClassifier, MultiTaskModule
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .benchmarks import Protocol
from .strategy import TrainableOnlyTemplate


def pooled_features(backbone: VisionTransformer, x: Tensor) -> Tensor:
    """The ViT's pooled pre-logits features (B, D), the input of every head here."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def _stitch(outputs: dict[int, Tensor], task_labels: Tensor) -> Tensor:
    """Per-sample rows of each sample's task output, padded with -inf (never argmax) to the widest."""
    width = max(o.shape[1] for o in outputs.values())
    ref = next(iter(outputs.values()))
    out = ref.new_full((task_labels.shape[0], width), float("-inf"))
    for t, logits in outputs.items():
        rows = task_labels == t
        out[rows, : logits.shape[1]] = logits[rows] if logits.shape[0] == task_labels.shape[0] else logits
    return out


class MultiHeadViT(MultiTaskModule):
    """Task protocol: one shared, trainable ViT and one head per task (Avalanche's multi-head)."""

    def __init__(self, backbone: VisionTransformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = MultiHeadClassifier(backbone.embed_dim, initial_out_features=2)

    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor | dict[int, Tensor]:
        if task_labels is None:
            return self.forward_all_tasks(x)
        features = pooled_features(self.backbone, x)
        labels = torch.as_tensor(task_labels, device=x.device).expand(x.shape[0])
        outs = {int(t): self.heads.forward_single_task(features, int(t)) for t in labels.unique().tolist()}
        return _stitch(outs, labels)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.heads.forward_single_task(pooled_features(self.backbone, x), task_label)

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """Every head on the features of ONE backbone pass."""
        features = pooled_features(self.backbone, x)
        return {
            int(t): self.heads.forward_single_task(features, int(t))
            for t in sorted(self.heads.known_train_tasks_labels)
        }


class SingleHeadViT(nn.Module):
    """Class protocol: one trainable ViT and one head that grows with the classes seen."""

    def __init__(self, backbone: VisionTransformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = IncrementalClassifier(backbone.embed_dim, initial_out_features=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(pooled_features(self.backbone, x))


class Expert(nn.Module):
    """One task's own ViT and head."""

    def __init__(self, backbone: VisionTransformer, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(pooled_features(self.backbone, x))


class PerTaskFineTune(MultiTaskModule):
    """Task protocol: each task fine-tunes its own copy of the pretrained backbone, plus a head."""

    def __init__(self, backbone: VisionTransformer) -> None:
        super().__init__()
        self.pretrained = backbone.requires_grad_(False)
        self.experts = nn.ModuleDict()

    def adaptation(self, experience) -> None:
        super().adaptation(experience)
        if not self.training:
            return
        self.experts.requires_grad_(False)
        num_classes = max(experience.classes_in_this_experience) + 1
        for t in experience.task_labels:
            if str(t) not in self.experts:
                self.add_expert(int(t), num_classes)

    def add_expert(self, task_label: int, num_classes: int) -> Expert:
        """A trainable copy of the pretrained backbone, with a new head, for one task."""
        expert = Expert(copy.deepcopy(self.pretrained), num_classes).to(self._adaptation_device)
        self.experts[str(task_label)] = expert.requires_grad_(True)
        return expert

    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor | dict[int, Tensor]:
        if task_labels is None:
            return self.forward_all_tasks(x)
        labels = torch.as_tensor(task_labels, device=x.device).expand(x.shape[0])
        outs = {}
        for t in labels.unique().tolist():
            rows = labels == t
            outs[int(t)] = self.forward_single_task(x[rows], int(t))
        return _stitch(outs, labels)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.experts[str(task_label)](x)

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """One backbone pass PER TASK: each expert is a different ViT."""
        return {int(t): expert(x) for t, expert in self.experts.items()}


class NCMModel(MultiTaskModule):
    """Nearest class mean (cosine) on the frozen backbone's features.

    Class means are fitted on each experience's features (a class's mean never depends on other
    classes, so per-experience fits just add up): the centroids of scikit-learn's `NearestCentroid`
    (a test checks), computed here because it refuses an experience of a single class. Logits are
    minus the distances to the means; in the task protocol only the sample's own task's means count.
    """

    def __init__(self, backbone: VisionTransformer, protocol: Protocol) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.protocol = protocol
        self.register_buffer("centroids", torch.zeros(0, backbone.embed_dim))
        self.register_buffer("centroid_class", torch.zeros(0, dtype=torch.long))
        self.register_buffer("centroid_task", torch.zeros(0, dtype=torch.long))

    def train(self, mode: bool = True) -> NCMModel:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return nn.functional.normalize(pooled_features(self.backbone, x), dim=1)

    def add_classes(self, features: Tensor, labels: Tensor, task: int) -> None:
        classes = labels.unique().to(self.centroids.device)
        means = [features[labels == c].mean(dim=0) for c in classes.tolist()]
        centroids = torch.stack(means).to(dtype=self.centroids.dtype, device=self.centroids.device)
        self.centroids = torch.cat([self.centroids, centroids])
        self.centroid_class = torch.cat([self.centroid_class, classes])
        self.centroid_task = torch.cat([self.centroid_task, torch.full_like(classes, task)])

    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor | dict[int, Tensor]:
        if task_labels is None:
            return self.forward_all_tasks(x)
        distances = torch.cdist(self.features(x), self.centroids)  # (B, K)
        width = int(self.centroid_class.max()) + 1
        out = distances.new_full((x.shape[0], width), float("-inf"))
        labels = torch.as_tensor(task_labels, device=x.device).expand(x.shape[0])
        for k in range(self.centroids.shape[0]):
            rows = labels == self.centroid_task[k] if self.protocol == "task" else slice(None)
            out[rows, self.centroid_class[k]] = -distances[rows, k]
        return out

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.forward(x, task_label)

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """All tasks from one pass: the distances are computed once, then masked per task."""
        distances = torch.cdist(self.features(x), self.centroids)
        outs = {}
        for t in self.centroid_task.unique().tolist():
            keep = self.centroid_task == t
            out = distances.new_full((x.shape[0], int(self.centroid_class[keep].max()) + 1), float("-inf"))
            out[:, self.centroid_class[keep]] = -distances[:, keep]
            outs[int(t)] = out
        return outs


class NCMStrategy(SupervisedTemplate):
    """Avalanche template whose 'training' is one pass collecting features, then the class means."""

    def __init__(self, *, model: NCMModel, **kwargs) -> None:
        super().__init__(model=model, optimizer=None, **kwargs)

    def make_optimizer(self, **kwargs) -> None:
        """Nothing is trained by gradient."""

    def training_epoch(self, **kwargs) -> None:
        features, labels = [], []
        for batch in self.dataloader:
            self.mbatch = batch
            self._unpack_minibatch()
            features.append(self.model.features(self.mb_x))
            labels.append(self.mb_y)
        self.model.add_classes(torch.cat(features), torch.cat(labels), self.experience.current_experience)


def finetune_model(backbone: VisionTransformer, protocol: Protocol) -> nn.Module:
    """The trainable model of the fine-tuning baselines (a copy of the backbone is trained)."""
    return MultiHeadViT(backbone) if protocol == "task" else SingleHeadViT(backbone)


def finetune_strategy(
    template: Callable[..., SupervisedTemplate], model: nn.Module, lr: float, weight_decay: float, **common
) -> SupervisedTemplate:
    """`template` (Naive, EWC, LwF, Replay, Cumulative, ...) over `model`, with AdamW over all its parameters."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return template(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), **common)


def per_task_finetune_strategy(
    backbone: VisionTransformer, lr: float, weight_decay: float, **common
) -> SupervisedTemplate:
    """Per-task full fine-tuning: AdamW rebuilt over the new expert only, old experts untouched."""
    return TrainableOnlyTemplate(model=PerTaskFineTune(backbone), lr=lr, weight_decay=weight_decay, **common)
