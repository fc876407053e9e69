"""Learning to Prompt (L2P): Avalanche's LearningToPrompt on our backbone (`scenarios.l2p`)."""

from __future__ import annotations

from typing import Any

from .registry import BuildRequest, register


def _l2p(request: BuildRequest) -> Any:
    from ..l2p import BackboneL2P

    num_classes = len(request.scenario.class_names)
    return BackboneL2P(backbone=request.backbone, num_classes=num_classes, lr=request.lr, **request.common)


register(
    "l2p",
    _l2p,
    lr_group="prompt",
    cost=1.3,
    protocols=("class",),
    help="Avalanche's Learning to Prompt, on our backbone",
)
