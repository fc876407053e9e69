"""Strategies that fine-tune the whole ViT: per task (full-ft), or one shared copy through Avalanche's
Naive, EWC, LwF, Replay and Cumulative. Models and templates are in `scenarios.baselines`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .registry import BuildRequest, register

#: Hyper-parameters of the regularisation / rehearsal baselines (Avalanche's usual values; the
#: replay buffer is small on purpose: about 7% of split-digits' training set).
EWC_LAMBDA = 1000.0
LWF_ALPHA = 1.0
LWF_TEMPERATURE = 2.0
REPLAY_MEMORY = 100


def _per_task(request: BuildRequest) -> Any:
    from ..baselines import per_task_finetune_strategy

    return per_task_finetune_strategy(request.backbone, request.lr, request.budget.weight_decay, **request.common)


def _shared(template: Callable[..., Any]) -> Callable[[BuildRequest], Any]:
    """A builder of `template` (an Avalanche strategy class, given model, optimizer, criterion)."""

    def build(request: BuildRequest) -> Any:
        from ..baselines import finetune_model, finetune_strategy

        model = finetune_model(request.backbone, request.scenario.protocol)
        return finetune_strategy(template, model, request.lr, request.budget.weight_decay, **request.common)

    return build


def _naive(**kwargs: Any) -> Any:
    from avalanche.training import Naive

    return Naive(**kwargs)


def _ewc(**kwargs: Any) -> Any:
    from avalanche.training import EWC

    return EWC(ewc_lambda=EWC_LAMBDA, mode="separate", **kwargs)


def _lwf(**kwargs: Any) -> Any:
    from avalanche.training import LwF

    return LwF(alpha=LWF_ALPHA, temperature=LWF_TEMPERATURE, **kwargs)


def _replay(**kwargs: Any) -> Any:
    from avalanche.training import Replay

    return Replay(mem_size=REPLAY_MEMORY, **kwargs)


def _cumulative(**kwargs: Any) -> Any:
    from avalanche.training.supervised.cumulative import Cumulative

    return Cumulative(**kwargs)


register(
    "full-ft",
    _per_task,
    lr_group="finetune",
    cost=1.1,
    protocols=("task",),
    help="per-task full fine-tuning: a copy of the ViT per task",
)
register("naive", _shared(_naive), lr_group="finetune", cost=1.0, help="fine-tune one ViT through every experience")
register("ewc", _shared(_ewc), lr_group="finetune", cost=1.4, help="Naive plus EWC's penalty on important weights")
register("lwf", _shared(_lwf), lr_group="finetune", cost=1.9, help="Naive plus LwF's distillation from the old model")
register("replay", _shared(_replay), lr_group="finetune", cost=1.7, help="Naive plus a small replay buffer")
register(
    "cumulative", _shared(_cumulative), lr_group="finetune", cost=3.0, help="retrain on all data so far (upper bound)"
)
