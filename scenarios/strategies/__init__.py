"""The strategies a scenario can run, in one registry (`registry`), one module per family.

`memory` (memory tokens, and the paper's head-only / head + class columns), `adapters` (per-task
bottleneck adapters, alone and with memory: the paper's Table 4), `finetuning` (per-task
full fine-tuning and Avalanche's Naive, EWC, LwF, Replay, Cumulative), `prompting` (L2P) and `ncm`
(nearest class mean). Each module registers its strategies when imported; `FAMILIES` sets the
order in which they are listed, compared and reported. Importing this package imports neither
torch, timm nor Avalanche: builders import what they need.

A new strategy: a `register(...)` call in its family's module (a new family: a new module here,
named in `FAMILIES`), plus its test.
"""

from __future__ import annotations

from importlib import import_module

from .registry import (
    QUICK_BUDGET,
    REGISTRY,
    Budget,
    BuildRequest,
    StrategyEntry,
    StrategySpec,
    entry_for,
    help_table,
    help_text,
    parse_pattern,
    parse_sized,
    pattern_usages,
    register,
    sized_usages,
    strategy_names,
)

#: The family modules, in the order their strategies are listed, compared and reported.
FAMILIES = ("memory", "adapters", "finetuning", "prompting", "ncm")

for _family in FAMILIES:
    import_module(f"{__name__}.{_family}")

#: Every name `StrategySpec` takes, in registry order.
STRATEGIES = strategy_names()

__all__ = [
    "FAMILIES",
    "QUICK_BUDGET",
    "REGISTRY",
    "STRATEGIES",
    "Budget",
    "BuildRequest",
    "StrategyEntry",
    "StrategySpec",
    "entry_for",
    "help_table",
    "help_text",
    "parse_pattern",
    "parse_sized",
    "pattern_usages",
    "register",
    "sized_usages",
    "strategy_names",
]
