"""What a task reaches without its memory tokens: the paper's "Head only" baseline, for comparison.

A new linear head on the frozen backbone's class-token features (after its final norm), trained like
a task's head (`TrainConfig`: AdamW at `head_lr`, cosine decay, same epochs, batch and seed). The
features never change, so they are computed once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from store import TaskStore

from ..data import InputSpec, split_train_val
from ..train import TrainConfig, cosine_factor, seed_everything
from .backbones import load_backbone
from .training import TrainRequest, load_task_data


@torch.no_grad()
def frozen_features(backbone: VisionTransformer, images: Tensor, batch_size: int = 256) -> Tensor:
    """The backbone's pre-logits class-token features of model-ready `images` (N, C, H, W)."""
    backbone.eval()
    chunks = [
        backbone.forward_head(backbone.forward_features(images[i : i + batch_size]), pre_logits=True)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def head_only_accuracy(
    backbone: VisionTransformer,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    config: TrainConfig = TrainConfig(),
) -> float:
    """Test accuracy of a head trained alone on `train` (model-ready images, labels)."""
    seed_everything(config.seed)
    features, labels = frozen_features(backbone, train[0]), train[1]
    head = torch.nn.Linear(features.shape[1], num_classes)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.head_lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_factor(s, total))
    gen = torch.Generator().manual_seed(config.seed)
    step = 0
    while step < total:
        for batch in torch.randperm(len(labels), generator=gen).split(config.batch_size):
            if step >= total:
                break
            loss = F.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    with torch.no_grad():
        predictions = head(frozen_features(backbone, test[0])).argmax(-1)
    return float((predictions == test[1]).float().mean())


def head_only_for_request(store: TaskStore, request: TrainRequest, test_source: str) -> float:
    """`head_only_accuracy` of a task's training request: the same backbone, the same training images
    (the request's train/validation split and seed), tested on `test_source` (the task's classes)."""
    task = store.get_task(request.task)
    backbone, _ = load_backbone(store, task.backbone)
    spec = InputSpec.from_backbone(backbone)
    data = load_task_data(store, request.task, request.data, request.skip_bad, spec.img_size)
    test = load_task_data(store, request.task, test_source, request.skip_bad, spec.img_size)
    train, _ = split_train_val(data, request.val_split, request.config.seed)
    return head_only_accuracy(
        backbone,
        (spec(train.images), train.labels),
        (spec(test.images), test.labels),
        len(data.class_names),
        request.config,
    )
