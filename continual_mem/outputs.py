"""What `MemoryViT`'s passes return: one reuse pass's outputs, several tasks' logits, and the
frozen backbone's share of a pass kept for training and caches."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .adapter import AttentionMode


@dataclass
class ReuseOutput:
    """What one reuse pass returns.

    `logits` and `task_features` map each served task to (B, C_task) and (B, D);
    `backbone_logits` and `features` are the frozen model's own head output and pooled features
    (None when the pass was asked for task outputs only).
    """

    logits: dict[str, Tensor]
    task_features: dict[str, Tensor]
    backbone_logits: Tensor | None
    features: Tensor | None


@dataclass
class TasksOutput:
    """Logits of several tasks, whatever their modes, and how many backbone passes they cost."""

    logits: dict[str, Tensor]
    backbone_passes: int
    modes: dict[str, AttentionMode] = field(default_factory=dict)


@dataclass
class BackbonePass:
    """The frozen backbone's share of a reuse pass over one batch, computed once without autograd.

    Each block's keys and values of the backbone tokens (B, H, N, Dh): all that task class tokens
    take from the backbone. One pass serves any number of reuse-mode tasks trained together, and
    (the backbone being frozen) the same images always give the same pass, so it can be cached
    across epochs (`feature_cache`).
    """

    keys_values: list[tuple[Tensor, Tensor]]
    #: The frozen model's pooled features (B, D), when the pass was asked for them.
    features: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.keys_values[0][0].shape[0])
