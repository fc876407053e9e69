"""Continual-learning scenarios on Avalanche: the memory-token strategy against Avalanche's own.

Modules: `benchmarks` (split-digits, shifted-digits, image folders, torchvision sets as Avalanche
benchmarks), `strategies` (the registry of every strategy a scenario runs: how to build it, its
learning rate, protocols and cost), `strategy` (the memory-token strategy), `bottleneck` (per-task
bottleneck adapters, alone and with memory), `baselines` (Naive,
EWC, LwF, Replay, Cumulative, per-task fine-tuning, NCM), `l2p` (the compatibility layer that runs
Avalanche's LearningToPrompt on our backbone), `plugins` (the shared learning-rate schedule and
parameter counter), `metrics` (defined in `metrics.md`), `runner` (train/evaluate one strategy),
`report` and `results` (tables, plots, docs/results.md), `costs` and `paper_tables` (each regime's
measured parameters and FLOPs; the paper's Tables 4 and 5). The `cmem scenario` commands that drive
them are in `continual_mem.cli.scenario` (the group, `run`, `runs`) and `continual_mem.cli.scenario_compare`
(`compare`, `results`).

Importing this package imports neither torch, timm nor Avalanche. It installs `quiet_avalanche`'s
warning filters, so they are in place before any module here imports `avalanche.training`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_AVALANCHE_DEPRECATION = "Call to deprecated function update (removal in version 0.7"


def quiet_avalanche() -> None:
    """Silence warnings of Avalanche's own code that say nothing about this project's runs.

    `avalanche.training` imports qpsolvers (for GEM, unused here), which warns that no QP solver is
    installed; Avalanche's EWC indexes a tensor with a list (a PyTorch deprecation).
    """
    warnings.filterwarnings("ignore", message=".*no QP solver found.*")
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")


@contextmanager
def avalanche_deprecations_dropped() -> Iterator[None]:
    """Drop the deprecation warnings Avalanche raises about its own internals; re-emit the rest.

    Avalanche's `@deprecated` wrapper calls `warnings.simplefilter("once", DeprecationWarning)`
    before warning, which overrides any ignore filter, so the warnings are caught and sorted here.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_avalanche()
        yield
    for w in caught:
        if not (issubclass(w.category, DeprecationWarning) and str(w.message).startswith(_AVALANCHE_DEPRECATION)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


quiet_avalanche()
