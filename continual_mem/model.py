"""MemoryViT: a frozen timm VisionTransformer that grows one task adapter per task.

Two forwards:
  * `forward_full(images, task)`: every token attends to the task's memory; one task per sample,
    and a batch may mix tasks (each sample then equals running it alone with its task).
  * `forward_reuse(images, tasks)`: the backbone's tokens run exactly as in the frozen model; each
    task's class token attends to the backbone's keys/values, itself and its own memory. ONE
    backbone pass serves every task, and adding a task never changes another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from . import attention
from .adapter import (
    AdapterConfig,
    AttentionMode,
    BackboneIdentity,
    TaskAdapter,
    default_class_names,
)
from .backbone import check_supported, identity_of
from .errors import BackboneMismatchError, ConfigError, ContinualMemError, UnknownTaskError
from .outputs import BackbonePass, ReuseOutput, TasksOutput


@dataclass
class _TaskState:
    """The task class tokens of a reuse pass as they move through the blocks."""

    tokens: Tensor  # (B, T, D)
    visible: Tensor  # (T, N + T + M) bool
    memory_kv: list[tuple[Tensor, Tensor]]  # per block: (H, M, Dh) keys and values


class _KVCache:
    """Per-task memory keys/values, reused until the memory tensor changes.

    A parameter's `_version` counter moves on every in-place update (optimizer steps,
    `load_state_dict`), so a stale entry is never served.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, torch.device], list[tuple[Tensor, Tensor]]]] = {}

    def get(self, name: str, model: MemoryViT) -> list[tuple[Tensor, Tensor]]:
        memory = model.tasks[name].memory
        if (torch.is_grad_enabled() and memory.requires_grad) or memory.is_inference():
            # training: part of the graph; inference tensors: no version counter to trust
            return model._compute_memory_kv(memory)
        key = (memory._version, memory.data_ptr(), memory.device)
        entry = self._entries.get(name)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = (key, model._compute_memory_kv(memory))
            self._entries[name] = entry
        return entry[1]

    def drop(self, name: str) -> None:
        self._entries.pop(name, None)


def tokens_per_image(backbone: VisionTransformer) -> int:
    """Tokens the backbone sees per image: patches plus class and register tokens."""
    return int(backbone.patch_embed.num_patches) + int(backbone.num_prefix_tokens)


def check_memory_tokens(backbone: VisionTransformer, num_memory: int) -> None:
    """Refuse more memory tokens per layer than the image has tokens: the memory would outweigh the image."""
    tokens = tokens_per_image(backbone)
    if num_memory > tokens:
        patches = int(backbone.patch_embed.num_patches)
        raise ConfigError(
            f"{num_memory} is more memory tokens per layer than the {tokens} tokens the backbone sees per image"
            f" ({patches} patches + {tokens - patches} class/register token(s)); use at most {tokens}"
        )


class MemoryViT(nn.Module):
    """A frozen timm ViT plus task adapters (memory tokens, class token, head per task)."""

    def __init__(
        self,
        backbone: VisionTransformer,
        identity: BackboneIdentity | None = None,
    ) -> None:
        super().__init__()
        check_supported(backbone, identity.name if identity else None)
        self.backbone = backbone
        self.identity = identity or identity_of(backbone)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.tasks = nn.ModuleDict()
        self._kv = _KVCache()

    # ----------------------------------------------------------------------------- structure
    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    @property
    def dim(self) -> int:
        return int(self.backbone.embed_dim)

    @property
    def tokens_per_image(self) -> int:
        return tokens_per_image(self.backbone)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks.keys())

    def train(self, mode: bool = True) -> MemoryViT:
        """Adapters follow `mode`; the backbone always stays in eval (no dropout, no drop-path)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def adapter(self, name: str) -> TaskAdapter:
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise UnknownTaskError(f"task {name!r} is not loaded (loaded: {known})")
        return self.tasks[name]  # type: ignore[return-value]

    def add_task(
        self,
        name: str,
        num_classes: int,
        *,
        num_memory: int = 5,
        mode: AttentionMode = "reuse",
        class_names: Sequence[str] = (),
        extension: bool = False,
        class_ids: Sequence[int] = (),
    ) -> TaskAdapter:
        """Create a new task: memory ~ N(0, 0.02), class token copied from the backbone's, new head.

        With `extension=True` (reuse mode only) the task's class token may also attend to the
        class tokens and memories of every reuse task already in the model. `class_ids`: the
        benchmark label of each head output, when those are not 0..C-1 (`AdapterConfig.class_ids`).
        More memory tokens per layer than the image has tokens are refused: the memory would
        outweigh the image itself.
        """
        check_memory_tokens(self.backbone, num_memory)
        extends = tuple(n for n in self.tasks if self.tasks[n].mode == "reuse") if extension else ()
        config = AdapterConfig(
            num_classes=num_classes,
            num_memory=num_memory,
            mode=mode,
            class_names=tuple(class_names) or default_class_names(num_classes),
            extends=extends,
            class_ids=tuple(int(c) for c in class_ids),
        )
        adapter = TaskAdapter(config, depth=self.depth, dim=self.dim, backbone=self.identity)
        with torch.no_grad():
            adapter.cls_token.copy_(self.backbone.cls_token)
        return self.attach(name, adapter)

    def attach(self, name: str, adapter: TaskAdapter) -> TaskAdapter:
        """Add an existing adapter under `name`, checking it fits this backbone."""
        if name in self.tasks:
            raise ContinualMemError(f"task {name!r} is already loaded")
        if (adapter.depth, adapter.dim) != (self.depth, self.dim):
            raise BackboneMismatchError(
                f"task {name!r} has depth {adapter.depth} and width {adapter.dim}; "
                f"the backbone has depth {self.depth} and width {self.dim}"
            )
        if adapter.backbone is not None and adapter.backbone.sha256 != self.identity.sha256:
            raise BackboneMismatchError(
                f"task {name!r} was trained on backbone {adapter.backbone.name} "
                f"(weights sha256 {adapter.backbone.sha256[:12]}), not on this {self.identity.name} "
                f"(weights sha256 {self.identity.sha256[:12]})"
            )
        missing = [n for n in adapter.config.extends if n not in self.tasks]
        if missing:
            raise ContinualMemError(f"task {name!r} extends tasks that are not loaded: {missing}")
        ref = self.backbone.cls_token
        self.tasks[name] = adapter.to(device=ref.device, dtype=ref.dtype)
        self._kv.drop(name)
        return adapter

    def remove_task(self, name: str) -> TaskAdapter:
        adapter = self.adapter(name)
        users = [n for n, a in self.tasks.items() if name in a.config.extends]
        if users:
            raise ContinualMemError(f"task {name!r} cannot be removed: {users} extend it")
        del self.tasks[name]
        self._kv.drop(name)
        return adapter

    def load_task(self, name: str, path: str | Path) -> TaskAdapter:
        """Load a saved adapter file, refusing one trained on another backbone."""
        return self.attach(name, TaskAdapter.load(path, expect_backbone=self.identity))

    def save_task(self, name: str, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
        return self.adapter(name).save(path, extra_metadata)

    def task_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.adapter(name).parameters())

    # ----------------------------------------------------------------------------- embedding
    def _positioned_cls(self, cls_token: Tensor) -> Tensor:
        """A class token as it enters block 0: plus position index 0 where the backbone does so."""
        bb = self.backbone
        if bb.pos_embed is not None and not bb.no_embed_class:
            cls_token = cls_token + bb.pos_embed[:, :1]
        return bb.pos_drop(cls_token)

    def embed(self, images: Tensor, cls_tokens: Tensor | None = None) -> Tensor:
        """Backbone tokens entering block 0, exactly as timm; optionally with per-sample class tokens."""
        bb = self.backbone
        x = bb._pos_embed(bb.patch_embed(images))
        if cls_tokens is not None:
            x = torch.cat([self._positioned_cls(cls_tokens), x[:, 1:]], dim=1)
        return bb.norm_pre(bb.patch_drop(x))

    def memory_keys_values(self, name: str) -> list[tuple[Tensor, Tensor]]:
        """Task `name`'s memory keys/values per block, each (H, m, Dh): cached while the memory does
        not change, part of the graph while it trains."""
        return self._kv.get(name, self)

    def _compute_memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [attention.memory_kv(blk, memory[i]) for i, blk in enumerate(self.backbone.blocks)]

    def task_logits(self, name: str, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Final norm, fc_norm and the task's head on its class token(s) (B, D): (logits, features)."""
        bb = self.backbone
        feats = bb.head_drop(bb.fc_norm(bb.norm(tokens)))
        return self.tasks[name].head(feats), feats

    # ----------------------------------------------------------------------------- full mode
    def forward_full(self, images: Tensor, tasks: str | Sequence[str]) -> Tensor:
        """Full mode: (B, C) logits for one task, or per-sample tasks in a mixed batch.

        A mixed batch returns (B, max C) with -inf in the columns past a sample's own class count,
        so argmax and softmax stay those of the sample's task.
        """
        names, index = self._per_sample_tasks(tasks, images.shape[0], images.device)
        adapters = [self._checked(n, "full") for n in names]
        cls = torch.cat([a.cls_token for a in adapters])[index]  # (B, 1, D)
        mem_kv, mem_mask = self._gather_memory_kv(names, index)
        x = self.embed(images, cls)
        for blk, (k, v) in zip(self.backbone.blocks, mem_kv):
            x = attention.block_forward_with_memory(blk, x, k, v, mem_mask)
        cls_out = x[:, 0]
        if len(names) == 1:
            return self.task_logits(names[0], cls_out)[0]
        width = max(a.config.num_classes for a in adapters)
        out = cls_out.new_full((images.shape[0], width), float("-inf"))
        for t, name in enumerate(names):
            rows = (index == t).nonzero(as_tuple=True)[0]
            logits = self.task_logits(name, cls_out[rows])[0]
            out[rows, : logits.shape[1]] = logits
        return out

    def _per_sample_tasks(
        self, tasks: str | Sequence[str], batch: int, device: torch.device
    ) -> tuple[list[str], Tensor]:
        if isinstance(tasks, str):
            return [tasks], torch.zeros(batch, dtype=torch.long, device=device)
        if len(tasks) != batch:
            raise ValueError(f"{len(tasks)} task names for a batch of {batch}")
        names = list(dict.fromkeys(tasks))
        position = {n: i for i, n in enumerate(names)}
        return names, torch.tensor([position[t] for t in tasks], device=device)

    def _gather_memory_kv(self, names: list[str], index: Tensor) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """Per-sample memory K/V for each block, (B, H, m_max, Dh), padded when sizes differ."""
        sizes = [self.tasks[n].num_memory for n in names]
        width = max(sizes)
        per_task = [self.memory_keys_values(n) for n in names]
        mask = None
        if min(sizes) != width:
            real = torch.arange(width, device=index.device)[None, :] < torch.tensor(sizes, device=index.device)[:, None]
            mask = real[index]
        gathered = []
        for layer in range(self.depth):
            ks, vs = zip(*(_pad_kv(kv[layer], width) for kv in per_task))
            gathered.append((torch.stack(ks)[index], torch.stack(vs)[index]))
        return gathered, mask

    # ----------------------------------------------------------------------------- reuse mode
    def forward_reuse(
        self, images: Tensor, tasks: Iterable[str] | None = None, backbone_outputs: bool = True
    ) -> ReuseOutput:
        """One backbone pass serving every requested reuse-mode task (all of them by default).

        The backbone path runs without autograd; only the task class tokens build a graph. With
        `backbone_outputs=False` the backbone's own head is skipped, and so is the last block's
        attention output and MLP for its tokens: the task tokens only need that block's keys/values.
        """
        requested = self._reuse_tasks(tasks)
        served = self._with_extended(requested)
        bb = self.backbone
        with torch.no_grad():
            x = self.embed(images)
        state = self._task_state(served, x.shape[0], x.shape[1]) if served else None
        last = len(bb.blocks) - 1
        for i, blk in enumerate(bb.blocks):
            with torch.no_grad():
                if i == last and not backbone_outputs:
                    bb_k, bb_v = attention.block_keys_values(blk, x)
                else:
                    x, bb_k, bb_v = attention.block_forward(blk, x)
            if state is not None:
                state.tokens = self._task_tokens_through(blk, state, i, bb_k, bb_v)
        features = backbone_logits = None
        if backbone_outputs:
            with torch.no_grad():
                features = bb.forward_head(bb.norm(x), pre_logits=True)
                backbone_logits = bb.head(features)
        logits: dict[str, Tensor] = {}
        task_features: dict[str, Tensor] = {}
        for t, name in enumerate(served):
            if name in requested:
                logits[name], task_features[name] = self.task_logits(name, state.tokens[:, t])  # type: ignore[union-attr]
        return ReuseOutput(logits, task_features, backbone_logits, features)

    @torch.no_grad()
    def backbone_pass(self, images: Tensor, features: bool = False) -> BackbonePass:
        """The backbone tokens through every block, keeping each block's keys/values, contiguous.

        The last block's attention output and MLP are skipped (the task tokens need only its
        keys/values) unless `features`: then they run, and so do the final norm and pooling, for
        the frozen model's features (which the class protocol's task router reads), as
        `forward_reuse` computes them.
        """
        x = self.embed(images)
        keys_values = []
        last = self.depth - 1
        for i, blk in enumerate(self.backbone.blocks):
            if i == last and not features:
                k, v = attention.block_keys_values(blk, x)
            else:
                x, k, v = attention.block_forward(blk, x)
            # one contiguous copy each, shared by every task: a strided view would be copied by
            # each task's products in the forward and again in the backward
            keys_values.append((k.contiguous(), v.contiguous()))
        pooled = self.backbone.forward_head(self.backbone.norm(x), pre_logits=True) if features else None
        return BackbonePass(keys_values, pooled)

    def reuse_logits(self, backbone: BackbonePass, tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        """`forward_reuse`'s logits of reuse-mode `tasks` over a kept backbone pass (a cache's):
        the same operations on the same numbers, so bit for bit its logits."""
        requested = self._reuse_tasks(tasks)
        served = self._with_extended(requested)
        batch, _, tokens, _ = backbone.keys_values[0][0].shape
        state = self._task_state(served, batch, tokens)
        for i, blk in enumerate(self.backbone.blocks):
            state.tokens = self._task_tokens_through(blk, state, i, *backbone.keys_values[i])
        return {n: self.task_logits(n, state.tokens[:, t])[0] for t, n in enumerate(served) if n in requested}

    @staticmethod
    def _task_tokens_through(blk: Block, state: _TaskState, i: int, bb_k: Tensor, bb_v: Tensor) -> Tensor:
        """The task tokens through block i over the backbone's keys/values there (serving math)."""
        mem_k, mem_v = state.memory_kv[i]
        return attention.task_block_forward(blk, state.tokens, bb_k, bb_v, mem_k, mem_v, state.visible)

    def reuse_outputs(self, backbone: BackbonePass, tasks: Sequence[str], exact: bool = True) -> dict[str, Tensor]:
        """Logits of reuse-mode `tasks` over one backbone pass, with autograd through the task tokens only.

        The training path. `exact=True`: each task's attention is its own kernel call and the
        norms, projections and MLP run over all tasks' rows at once only where that rounds every
        row as alone (`attention.rows_stack_exactly`), so a task's logits (and gradients) are bit
        for bit those of running it alone on the same pass;
        `exact=False`: one batched call for all tasks (faster, rounding moves by about 1e-7).
        """
        requested = self._reuse_tasks(tasks)
        served = self._with_extended(requested)
        bb = self.backbone
        batch = backbone.batch_size
        cls = [bb.norm_pre(self._positioned_cls(self.tasks[n].cls_token)) for n in served]  # each (1, 1, D)
        tokens = [c.expand(batch, -1, -1) for c in cls] if exact else [torch.cat(cls, dim=1).expand(batch, -1, -1)]
        memory = [self.memory_keys_values(n) for n in served]
        sees = [[j for j, m in enumerate(served) if m == n or m in self.tasks[n].config.extends] for n in served]
        visible = None if exact else self._visibility(served, 0, cls[0].device)
        stack = exact and self._rows_stack_exactly(batch, len(served), cls[0].device)
        for i, blk in enumerate(bb.blocks):
            bb_k, bb_v = backbone.keys_values[i]
            tokens = attention.own_task_block_forward(
                blk, tokens, bb_k, bb_v, [kv[i] for kv in memory], sees, visible, stack
            )
        feats = [bb.head_drop(bb.fc_norm(bb.norm(z))) for z in tokens]
        rows = [(t, 0) for t in range(len(served))] if exact else [(0, t) for t in range(len(served))]
        return {n: self.tasks[n].head(feats[f][:, r]) for n, (f, r) in zip(served, rows) if n in requested}

    def _rows_stack_exactly(self, batch: int, tasks: int, device: torch.device) -> bool:
        """Whether the exact path may run the tasks' row-wise work as one GEMM per layer (see
        `attention.rows_stack_exactly`); never under autocast, whose GEMMs the probe does not run."""
        if tasks < 2 or torch.is_autocast_enabled(device.type):
            return False
        shapes = attention.linear_shapes(self.backbone.blocks[0])
        return attention.rows_stack_exactly(shapes, batch, tasks, str(device), torch.get_num_threads())

    def _reuse_tasks(self, tasks: Iterable[str] | None) -> list[str]:
        if tasks is None:
            return [n for n, a in self.tasks.items() if a.mode == "reuse"]
        names = list(dict.fromkeys(tasks))
        for n in names:
            self._checked(n, "reuse")
        return names

    def _with_extended(self, names: list[str]) -> list[str]:
        """The requested tasks plus the tasks they extend, in the model's insertion order."""
        needed = set(names)
        for n in names:
            needed.update(self.tasks[n].config.extends)
        return [n for n in self.tasks if n in needed]

    def _task_state(self, names: list[str], batch: int, num_tokens: int) -> _TaskState:
        """Task tokens entering block 0 (B, T, D), what each task sees, per-block memory K/V."""
        cls = torch.cat([self.tasks[n].cls_token for n in names], dim=1)  # (1, T, D)
        tokens = self.backbone.norm_pre(self._positioned_cls(cls)).expand(batch, -1, -1)
        per_task = [self.memory_keys_values(n) for n in names]
        memory_kv = [
            (
                torch.cat([kv[i][0] for kv in per_task], dim=1),
                torch.cat([kv[i][1] for kv in per_task], dim=1),
            )
            for i in range(self.depth)
        ]
        return _TaskState(tokens, self._visibility(names, num_tokens, cls.device), memory_kv)

    def _visibility(self, names: list[str], num_tokens: int, device: torch.device) -> Tensor:
        """(T, N + T + M): every backbone token, itself, its memory, and the tasks it extends."""
        sizes = [self.tasks[n].num_memory for n in names]
        owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes, dtype=torch.long))
        sees = torch.eye(len(names), dtype=torch.bool)
        for t, n in enumerate(names):
            for other in self.tasks[n].config.extends:
                sees[t, names.index(other)] = True
        backbone = torch.ones(len(names), num_tokens, dtype=torch.bool)
        return torch.cat([backbone, sees, sees[:, owner]], dim=1).to(device)

    # ----------------------------------------------------------------------------- routing
    def _checked(self, name: str, mode: AttentionMode) -> TaskAdapter:
        adapter = self.adapter(name)
        if adapter.mode != mode:
            raise ContinualMemError(f"task {name!r} was trained in {adapter.mode} mode and cannot run in {mode} mode")
        return adapter

    def forward_tasks(self, images: Tensor, tasks: Iterable[str] | None = None) -> TasksOutput:
        """Logits of every requested task: reuse tasks share one pass, full tasks run one each."""
        names = list(dict.fromkeys(tasks)) if tasks is not None else self.task_names
        modes = {n: self.adapter(n).mode for n in names}
        reuse = [n for n in names if modes[n] == "reuse"]
        logits: dict[str, Tensor] = {}
        passes = 0
        if reuse:
            logits.update(self.forward_reuse(images, reuse, backbone_outputs=False).logits)
            passes += 1
        for n in names:
            if modes[n] == "full":
                logits[n] = self.forward_full(images, n)
                passes += 1
        return TasksOutput({n: logits[n] for n in names}, passes, modes)

    def forward(self, images: Tensor, task: str) -> Tensor:
        """Logits of one task in the mode it was trained in."""
        if self.adapter(task).mode == "full":
            return self.forward_full(images, task)
        return self.forward_reuse(images, [task], backbone_outputs=False).logits[task]


def _pad_kv(kv: tuple[Tensor, Tensor], width: int) -> tuple[Tensor, Tensor]:
    k, v = kv
    pad = width - k.shape[1]
    if pad == 0:
        return k, v
    return nn.functional.pad(k, (0, 0, 0, pad)), nn.functional.pad(v, (0, 0, 0, pad))
