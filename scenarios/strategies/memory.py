"""The memory-token strategy and the paper's two head columns: one task adapter per experience.

Implemented in `scenarios.strategy` (`MemoryTokenModel`, `MemoryTokenStrategy`); the variants
differ in what each task trains (`AdapterVariant`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .registry import BuildRequest, StrategySpec, register

if TYPE_CHECKING:
    from ..strategy import AdapterVariant


def _adapter_strategy(variant_of: Callable[[StrategySpec], AdapterVariant]) -> Callable[[BuildRequest], Any]:
    def build(request: BuildRequest) -> Any:
        from ..strategy import MemoryTokenModel, MemoryTokenStrategy

        budget = request.budget
        model = MemoryTokenModel(request.backbone, variant_of(request.spec), request.scenario.protocol, request.route)
        return MemoryTokenStrategy(
            model=model, lr=request.lr, head_lr=budget.lr_head, weight_decay=budget.weight_decay, **request.common
        )

    return build


def _memory(spec: StrategySpec) -> AdapterVariant:
    from ..strategy import AdapterVariant

    return AdapterVariant(spec.memory, attention=spec.attention)


def _head_only(spec: StrategySpec) -> AdapterVariant:
    from ..strategy import HEAD_ONLY

    return HEAD_ONLY


def _head_class(spec: StrategySpec) -> AdapterVariant:
    from ..strategy import HEAD_CLASS

    return HEAD_CLASS


register(
    "memory",
    _adapter_strategy(_memory),
    lr_group="adapter",
    cost=0.5,
    sized=True,
    routed=True,
    help="M memory tokens per layer; one backbone pass serves every task",
)
register(
    "memory",
    _adapter_strategy(_memory),
    lr_group="adapter",
    cost=0.9,
    sized=True,
    attention="full",
    routed=True,
    protocols=("task",),
    help="the same, input tokens attend to the memory too (the paper's Table 2)",
)
register(
    "head-only",
    _adapter_strategy(_head_only),
    lr_group="adapter",
    cost=0.5,
    routed=True,
    help="a new head per task on the frozen backbone (the paper's 'Head only')",
)
register(
    "head-class",
    _adapter_strategy(_head_class),
    lr_group="adapter",
    cost=0.5,
    routed=True,
    help="a new head and class token per task (the paper's 'Head + Class')",
)
