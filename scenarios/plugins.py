"""Avalanche plugins every strategy of a comparison shares: one learning-rate schedule, one counter."""

from __future__ import annotations

from avalanche.training.plugins import SupervisedPlugin

from continual_mem.train import cosine_factor


class CosineSchedule(SupervisedPlugin):
    """The same learning-rate schedule for every strategy: cosine from `lr` to 0 per experience.

    Sets each parameter group's rate before every iteration, so it works whatever optimizer a
    strategy builds or rebuilds (Avalanche's own, L2P's, the memory strategy's). A group with its
    own `base_lr` (the memory strategy's token and head groups) decays from that instead.
    """

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self._total = 1

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        self._total = max(1, strategy.train_epochs * len(strategy.dataloader))

    def before_training_iteration(self, strategy, *args, **kwargs) -> None:
        factor = cosine_factor(strategy.clock.train_exp_iterations, self._total)
        for group in strategy.optimizer.param_groups:
            group["lr"] = group.get("base_lr", self.lr) * factor


class TrainableCounter(SupervisedPlugin):
    """Records how many parameters each experience trains (those its optimizer updates)."""

    def __init__(self) -> None:
        super().__init__()
        self.per_experience: list[int] = []

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        seen: set[int] = set()
        count = 0
        for group in strategy.optimizer.param_groups if strategy.optimizer is not None else []:
            for p in group["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    count += p.numel()
        self.per_experience.append(count)
