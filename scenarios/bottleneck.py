"""Per-task bottleneck adapters on the frozen ViT (Houlsby et al., 2019), for the paper's Table 4.

Each block gets two adapters, one on its attention's output and one on its MLP's, applied before
that output joins the residual stream: `h -> h + up(GELU(down(h)))`, `down` D -> R, `up` R -> D.
`up` starts at zero, so a new task's adapters are exactly the identity and the task starts from
the frozen model. The backbone stays frozen; each task owns its adapters, class token and head
(`adapter-R`), and with memory also its memory tokens, which every token attends to in every block
(`memory-M+adapter-R`: full attention, as the paper combines them).

Unlike memory in reuse mode, adapters change every token from the first block on, so no pass is
shared: serving T tasks takes T backbone passes, and the class protocol one more, the frozen pass
whose features route a sample to its task (the memory strategy's `TaskRouter`).

`AdapterTokenModel` is the memory strategy's `MemoryTokenModel` with a different pass per task;
everything else (label space, untrained tasks, routing, freezing, optimizer groups) is its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from continual_mem import attention
from continual_mem.model import MemoryViT

from .benchmarks import Protocol
from .strategy import DEFAULT_ROUTE, DEFAULT_SHRINKAGE, AdapterVariant, MemoryTokenModel, MemoryTokenStrategy, Route


class Bottleneck(nn.Module):
    """`h + up(GELU(down(h)))`, with `up` zero: exactly the identity until it learns."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(F.gelu(self.down(h)))


class TaskBottlenecks(nn.Module):
    """One task's adapters: after the attention (`attn[i]`) and after the MLP (`mlp[i]`) of block i."""

    def __init__(self, depth: int, dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"bottleneck size must be >= 1, got {size}")
        self.attn = nn.ModuleList(Bottleneck(dim, size) for _ in range(depth))
        self.mlp = nn.ModuleList(Bottleneck(dim, size) for _ in range(depth))


def count_bottleneck_parameters(depth: int, dim: int, size: int) -> int:
    """Trainable numbers of one task's adapters: 2 per block, each D*R + R + R*D + D."""
    return 2 * depth * (dim * size + size + size * dim + dim)


def adapted_block(
    block: Block, x: Tensor, attn_adapter: Bottleneck, mlp_adapter: Bottleneck, memory: tuple[Tensor, Tensor] | None
) -> Tensor:
    """One frozen block with the task's two adapters; every token also attends to `memory`, the
    task's keys and values of this block (H, M, Dh), when given."""
    h = block.norm1(x)
    q, k, v = attention.split_qkv(block.attn, h)
    if memory is not None:
        batch = x.shape[0]
        k = torch.cat([k, memory[0].expand(batch, -1, -1, -1)], dim=2)
        v = torch.cat([v, memory[1].expand(batch, -1, -1, -1)], dim=2)
    out = attention.project(block.attn, attention.attend(block.attn, q, k, v), h)
    x = x + block.drop_path1(attn_adapter(block.ls1(out)))
    return x + block.drop_path2(mlp_adapter(block.ls2(block.mlp(block.norm2(x)))))


def forward_adapted(vit: MemoryViT, name: str, bottlenecks: TaskBottlenecks, images: Tensor) -> Tensor:
    """Task `name`'s logits (B, C): one backbone pass through its adapters (and memory, if it has any).

    The class token, memory keys/values (cached per task while they do not change) and head are
    the task's adapter in `vit`; the embedding and the final norm are the backbone's, as in
    `MemoryViT.forward_full`.
    """
    task = vit.adapter(name)
    x = vit.embed(images, task.cls_token.expand(images.shape[0], -1, -1))
    memory = vit.memory_keys_values(name) if task.num_memory > 0 else None
    for i, block in enumerate(vit.backbone.blocks):
        x = adapted_block(block, x, bottlenecks.attn[i], bottlenecks.mlp[i], memory[i] if memory else None)
    return vit.task_logits(name, x[:, 0])[0]


def frozen_features(vit: MemoryViT, images: Tensor) -> Tensor:
    """The frozen backbone's pooled features (B, D), exactly as the memory strategy routes with them."""
    with torch.no_grad():
        features = vit.forward_reuse(images, [], backbone_outputs=True).features
    assert features is not None
    return features


class AdapterTokenModel(MemoryTokenModel):
    """`MemoryTokenModel` whose tasks also own bottleneck adapters, each task run in its own pass.

    `variant` gives the memory size (0: adapters, class token and head only); its attention is
    full. Class protocol: the router's features come from the frozen pass, computed on demand in
    training (the plugin reads them in the first epoch only) and with every evaluation.
    """

    full_attention_protocols: tuple[Protocol, ...] = ("task", "class")

    def __init__(
        self,
        backbone: VisionTransformer,
        variant: AdapterVariant,
        protocol: Protocol,
        route: Route = DEFAULT_ROUTE,
        shrinkage: float | None = DEFAULT_SHRINKAGE,
        *,
        bottleneck: int,
    ) -> None:
        if variant.attention != "full":
            raise ValueError("adapters change every token: their memory, if any, runs with full attention")
        if bottleneck < 1:
            raise ValueError(f"bottleneck size must be >= 1, got {bottleneck}")
        super().__init__(backbone, variant, protocol, route, shrinkage)  # sets last_features: both below
        self.bottleneck = bottleneck
        self.bottlenecks = nn.ModuleDict()

    # ----------------------------------------------------------------- routing features, lazily
    @property
    def last_features(self) -> Tensor | None:
        """The frozen backbone's features of the last batch (class protocol), computed when first read."""
        if self._features is None and self._unrouted is not None:
            self._features, self._unrouted = frozen_features(self.vit, self._unrouted), None
        return self._features

    @last_features.setter
    def last_features(self, value: Tensor | None) -> None:
        self._features, self._unrouted = value, None

    # ----------------------------------------------------------------- tasks
    def add_task(self, name: str, classes: list[int], task_labels: list[int]) -> int:
        index = super().add_task(name, classes, task_labels)
        ref = self.vit.backbone.cls_token
        self.bottlenecks[name] = TaskBottlenecks(self.vit.depth, self.vit.dim, self.bottleneck).to(
            device=ref.device, dtype=ref.dtype
        )
        return index

    def freeze_tasks(self) -> None:
        super().freeze_tasks()
        self.bottlenecks.requires_grad_(False)

    def task_bottlenecks(self, task: int) -> TaskBottlenecks:
        return self.bottlenecks[self.task_names[task]]  # type: ignore[return-value]

    # ----------------------------------------------------------------- passes
    def _task_logits(self, x: Tensor, task: int) -> Tensor:
        """One task's own pass; in the class protocol the batch is kept for the router's features."""
        if self.router is not None:
            self._features, self._unrouted = None, x
        return forward_adapted(self.vit, self.task_names[task], self.task_bottlenecks(task), x)

    def forward_all_tasks(self, x: Tensor) -> dict[int, Tensor]:
        """Every task's logits: one pass per task (class protocol: plus the frozen routing pass)."""
        return dict(enumerate(self._reuse_logits(x)))

    def _reuse_logits(self, x: Tensor) -> list[Tensor]:
        """Every task's logits, each from its own pass; the class protocol also routes from the frozen pass."""
        logits = [forward_adapted(self.vit, n, self.task_bottlenecks(t), x) for t, n in enumerate(self.task_names)]
        if self.router is not None:
            self.last_features = frozen_features(self.vit, x)
        return logits

    def _trained_answers(self, x: Tensor, chosen: Tensor) -> list[tuple[Tensor, list[int], Tensor]]:
        """Task protocol: each trained task's pass over its own samples only (one pass per image)."""
        present = [t for t in chosen.unique().tolist() if t >= 0]
        return [(chosen == t, self.classes_of(t), self._task_logits(x[chosen == t], t)) for t in present]


class AdapterTokenStrategy(MemoryTokenStrategy):
    """The memory strategy's template; each experience also trains its task's adapters, at `lr`."""

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        model: AdapterTokenModel = self.model
        if groups:
            params = [p for p in model.task_bottlenecks(len(model.task_names) - 1).parameters() if p.requires_grad]
            groups.append({"params": params, "lr": self.lr, "base_lr": self.lr})
        return groups
