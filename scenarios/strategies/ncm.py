"""Nearest class mean on the frozen backbone's features: fitted in one pass, no gradient step."""

from __future__ import annotations

from typing import Any

from .registry import BuildRequest, register


def _ncm(request: BuildRequest) -> Any:
    from ..baselines import NCMModel, NCMStrategy
    from ..plugins import TrainableCounter

    common = {**request.common, "train_epochs": 1, "plugins": [TrainableCounter()]}  # one pass, no schedule
    return NCMStrategy(model=NCMModel(request.backbone, request.scenario.protocol), **common)


# Its rate is never used (nothing is trained by gradient); the fine-tuning group keeps it recorded as before.
register("ncm", _ncm, lr_group="finetune", cost=0.1, help="nearest class mean on the frozen features")
