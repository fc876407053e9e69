"""Continual-learning scenarios on Avalanche: the memory-token strategy against Avalanche's own.

Modules: `benchmarks` (split-digits, synthetic, image folders, torchvision sets as Avalanche
benchmarks), `strategy` (the memory-token strategy), `baselines` (Naive, EWC, LwF, Replay,
Cumulative, per-task fine-tuning, NCM), `l2p` (the compatibility layer that runs Avalanche's
LearningToPrompt on our backbone), `runner` (train/evaluate one strategy, metrics), `report`
(tables, plots, docs/results.md) and `cli` (the `cmem scenario` commands).

Importing this package imports neither torch, timm nor Avalanche; `quiet_avalanche()` must run
before the first `avalanche.training` import (every module here that needs it calls it).
"""

from __future__ import annotations

import warnings


def quiet_avalanche() -> None:
    """Silence import-time warnings that say nothing about this project's runs.

    `avalanche.training` imports qpsolvers (for GEM, unused here), which warns that no QP solver is
    installed; Avalanche's L2P model imports timm's deprecated `timm.models.layers` path.
    """
    warnings.filterwarnings("ignore", message=".*no QP solver found.*")
    warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated")
    warnings.filterwarnings("ignore", message="Importing from timm.models.helpers is deprecated")
