"""Bottleneck adapters per task, alone (`adapter-R`) and with memory (`memory-M+adapter-R`): the
paper's Table 4. Implemented in `scenarios.bottleneck` on the memory strategy's model and template."""

from __future__ import annotations

from typing import Any

from .registry import BuildRequest, register


def _adapters(request: BuildRequest) -> Any:
    from ..bottleneck import AdapterTokenModel, AdapterTokenStrategy
    from ..strategy import AdapterVariant

    spec, budget = request.spec, request.budget
    memory = spec.memory if spec.entry.takes_memory else 0
    model = AdapterTokenModel(
        request.backbone,
        AdapterVariant(memory, attention="full"),
        request.scenario.protocol,
        request.route,
        bottleneck=spec.bottleneck,
    )
    return AdapterTokenStrategy(
        model=model, lr=request.lr, head_lr=budget.lr_head, weight_decay=budget.weight_decay, **request.common
    )


register(
    "adapter",
    _adapters,
    lr_group="adapter",
    cost=1.0,
    pattern="adapter-{R}",
    routed=True,
    help="bottleneck-R adapters after attention and MLP of every block, per task; one pass per task",
)
register(
    "memory+adapter",
    _adapters,
    lr_group="adapter",
    cost=1.1,
    pattern="memory-{M}+adapter-{R}",
    routed=True,
    help="both per task: M memory tokens (full attention) and bottleneck-R adapters (the paper's Table 4)",
)
