"""Per-block math of memory-augmented attention on a timm ViT `Block`.

Shapes: B batch, N backbone tokens (class, registers, patches), T task class tokens, H heads,
Dh head width, D = H*Dh, M memory tokens (all tasks of a pass, concatenated).

Memory tokens go through the block's `norm1` and its K/V projection and are never queries; they are
dropped after the attention, so they never reach the residual stream, the MLP or the next block.
The backbone-token math mirrors timm's `Attention.forward` op for op so that a reuse pass
reproduces the frozen model bit for bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block
from torch import Tensor


def split_qkv(attn: Attention, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of normalised tokens h (B, N, D), each (B, H, N, Dh), with q/k norms applied."""
    B, N, _ = h.shape
    qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def memory_kv(block: Block, memory: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values of one block's memory tokens (m, D): each (H, m, Dh).

    They depend on the memory and the frozen block only, never on the input image, so inference
    computes them once per task.
    """
    _, k, v = split_qkv(block.attn, block.norm1(memory.unsqueeze(0)))
    return k[0], v[0]


def attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention exactly as timm computes it (fused or manual, per `attn.fused_attn`)."""
    if attn.fused_attn:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    q = q * attn.scale
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def project(attn: Attention, out: Tensor, h: Tensor) -> Tensor:
    """Merge heads (B, H, N, Dh) -> (B, N, D), then timm's scale-norm, gate and output projection."""
    B, _, N, _ = out.shape
    x = attn.norm(out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        x = x * attn.gate(h).sigmoid()
    return attn.proj_drop(attn.proj(x))


def residual_and_mlp(block: Block, x: Tensor, attn_out: Tensor) -> Tensor:
    """The rest of a pre-norm block after its attention: residual, layer scale, MLP."""
    x = x + block.drop_path1(block.ls1(attn_out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def block_forward(block: Block, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The frozen block on backbone tokens; also returns their keys and values for task tokens."""
    h = block.norm1(x)
    q, k, v = split_qkv(block.attn, h)
    out = project(block.attn, attend(block.attn, q, k, v), h)
    return residual_and_mlp(block, x, out), k, v


def block_keys_values(block: Block, x: Tensor) -> tuple[Tensor, Tensor]:
    """Only the keys and values of the backbone tokens: all the task tokens need from the last block."""
    _, k, v = split_qkv(block.attn, block.norm1(x))
    return k, v


def block_forward_with_memory(
    block: Block, x: Tensor, mem_k: Tensor, mem_v: Tensor, mem_mask: Tensor | None = None
) -> Tensor:
    """Full mode: every token also attends to per-sample memory keys/values (B, H, m, Dh).

    `mem_mask` (B, m) marks real memory slots when tasks of one batch have different memory sizes.
    """
    h = block.norm1(x)
    q, k, v = split_qkv(block.attn, h)
    mask = None
    if mem_k.shape[2] > 0:
        k = torch.cat([k, mem_k], dim=2)
        v = torch.cat([v, mem_v], dim=2)
        if mem_mask is not None:
            keep_tokens = mem_mask.new_ones(x.shape[0], x.shape[1])
            mask = torch.cat([keep_tokens, mem_mask], dim=1)[:, None, None, :]
    out = project(block.attn, attend(block.attn, q, k, v, mask), h)
    return residual_and_mlp(block, x, out)


def task_token_attention(
    attn: Attention,
    q: Tensor,
    tok_k: Tensor,
    tok_v: Tensor,
    bb_k: Tensor,
    bb_v: Tensor,
    mem_k: Tensor,
    mem_v: Tensor,
    visible: Tensor,
) -> Tensor:
    """Reuse mode: task class tokens q (B, H, T, Dh) attend to [backbone ; task tokens ; memory].

    Backbone keys bb_k (B, H, N, Dh) are shared by all tasks; task-token keys tok_k (B, H, T, Dh);
    memory keys mem_k (H, M, Dh) do not depend on the input. `visible` (T, N + T + M) says what
    each task sees: every backbone token, itself and its own memory, and with model extension
    also the tasks it extends. One fused attention call (the key copy is cheaper than the
    strided batched matmuls a manual softmax over the three blocks would need).
    """
    B = q.shape[0]
    k = torch.cat([bb_k, tok_k, mem_k.expand(B, -1, -1, -1)], dim=2)
    v = torch.cat([bb_v, tok_v, mem_v.expand(B, -1, -1, -1)], dim=2)
    return attend(attn, q, k, v, visible)


def task_block_forward(
    block: Block,
    z: Tensor,
    bb_k: Tensor,
    bb_v: Tensor,
    mem_k: Tensor,
    mem_v: Tensor,
    visible: Tensor,
) -> Tensor:
    """One block for the task class tokens z (B, T, D) over the backbone's keys/values."""
    h = block.norm1(z)
    q, k, v = split_qkv(block.attn, h)
    out = task_token_attention(block.attn, q, k, v, bb_k, bb_v, mem_k, mem_v, visible)
    return residual_and_mlp(block, z, project(block.attn, out, h))


def own_task_attention(
    attn: Attention, q: Tensor, bb_k: Tensor, bb_v: Tensor, own_k: Tensor, own_v: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Task queries q (B, H, Tq, Dh) over the shared backbone keys bb_k (B, H, N, Dh) and their own keys.

    own_k (B, H, E, Dh): the task tokens and memory the queries may see (`mask` (Tq, E) says which
    when several tasks share one call). The backbone keys are never copied and get no gradient:
    the scores against them and against the task's own keys are two products, joined before the
    softmax. Computed the same way for one task or many, row for row.
    """
    q = q * attn.scale
    own = q @ own_k.transpose(-2, -1)
    if mask is not None:
        own = own.masked_fill(~mask, float("-inf"))
    n = bb_k.shape[2]
    p = torch.cat([q @ bb_k.transpose(-2, -1), own], dim=-1).softmax(dim=-1)
    return p[..., :n] @ bb_v + p[..., n:] @ own_v


def own_task_block_forward(
    block: Block,
    tokens: list[Tensor],
    bb_k: Tensor,
    bb_v: Tensor,
    memory: list[tuple[Tensor, Tensor]],
    sees: list[list[int]],
    visible: Tensor | None = None,
    stack: bool = False,
) -> list[Tensor]:
    """One block for the class tokens of tasks trained side by side over the shared backbone K/V.

    `memory[t]`: task t's memory keys/values (H, m_t, Dh) in this block; `sees[t]`: the tasks whose
    token and memory task t attends to (itself, and with model extension the tasks it extends).
    Exact (`visible` None): `tokens` holds one (B, 1, D) tensor per task and a task's numbers do not
    depend on which tasks share the pass. Each task's attention is its own call at the shapes it
    has alone. The row-wise operations (norms, projections, MLP) run per task too, unless `stack`:
    then once over every task's rows, which only the caller may ask for where
    `rows_stack_exactly` found that these GEMMs round each row as they do alone.
    Batched (`visible` (T, T + M)): one (B, T, D) tensor and one call for every operation
    (rounding moves by about 1e-7).
    """
    batch = bb_k.shape[0]
    if visible is not None:
        (z,) = tokens
        h = block.norm1(z)
        q, k, v = split_qkv(block.attn, h)
        own_k = torch.cat([k, *(mk.expand(batch, -1, -1, -1) for mk, _ in memory)], dim=2)
        own_v = torch.cat([v, *(mv.expand(batch, -1, -1, -1) for _, mv in memory)], dim=2)
        out = own_task_attention(block.attn, q, bb_k, bb_v, own_k, own_v, visible)
        return [residual_and_mlp(block, z, project(block.attn, out, h))]
    if stack:
        z = torch.cat(tokens)
        h = block.norm1(z)
        qkv = list(zip(*(t.split(batch) for t in split_qkv(block.attn, h))))
        out = torch.cat(
            [_one_task_attention(block.attn, qkv, memory, t, seen, bb_k, bb_v) for t, seen in enumerate(sees)]
        )
        return list(residual_and_mlp(block, z, project(block.attn, out, h)).split(batch))
    normed = [block.norm1(z) for z in tokens]
    qkv = [split_qkv(block.attn, h) for h in normed]
    return [
        residual_and_mlp(
            block,
            tokens[t],
            project(block.attn, _one_task_attention(block.attn, qkv, memory, t, seen, bb_k, bb_v), normed[t]),
        )
        for t, seen in enumerate(sees)
    ]


def _one_task_attention(
    attn: Attention,
    qkv: list[tuple[Tensor, Tensor, Tensor]],
    memory: list[tuple[Tensor, Tensor]],
    t: int,
    seen: list[int],
    bb_k: Tensor,
    bb_v: Tensor,
) -> Tensor:
    """Task t's queries over the backbone keys, the task tokens it sees and their memory."""
    batch = bb_k.shape[0]
    own_k = torch.cat([*(qkv[j][1] for j in seen), *(memory[j][0].expand(batch, -1, -1, -1) for j in seen)], dim=2)
    own_v = torch.cat([*(qkv[j][2] for j in seen), *(memory[j][1].expand(batch, -1, -1, -1) for j in seen)], dim=2)
    return own_task_attention(attn, qkv[t][0], bb_k, bb_v, own_k, own_v)


@functools.cache
def rows_stack_exactly(shapes: tuple[tuple[int, int], ...], rows: int, groups: int, device: str, threads: int) -> bool:
    """Whether GEMMs with these weight `shapes` (out, in) give each of `groups` blocks of `rows`
    rows bit for bit what they give that block alone, forward and backward (through the input).

    True for most shapes, not all: a BLAS picks its kernels and splits the rows among threads by
    the number of rows (measured on this project's 2-core CPUs with 2 threads: 2, 3, 5, 7 or 9-11
    rows alone round unlike the same rows among 8x as many, 8 or 12-256 alike; 1 row goes through
    a GEMV; on another, AVX-512 one, 9-64 rows alike and 8 not with one thread, and with two
    threads no count of 8-64 at ViT-S's shapes), and a GPU library picks algorithms by shape. The
    kernels depend on the shapes, the device and the threads, not on the values, so one probe on
    random numbers per combination answers it (cached).
    """
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in shapes:
        w, b = (
            torch.randn(*size, generator=generator).to(device)
            for size in ((out_features, in_features), (out_features,))
        )
        x = torch.randn(groups * rows, in_features, generator=generator).to(device)
        g = torch.randn(groups * rows, out_features, generator=generator).to(device)
        forward = F.linear(x, w, b), torch.cat([F.linear(part, w, b) for part in x.split(rows)])
        backward = g @ w, torch.cat([part @ w for part in g.split(rows)])
        if not (torch.equal(*forward) and torch.equal(*backward)):
            return False
    return True


def linear_shapes(block: Block) -> tuple[tuple[int, int], ...]:
    """(out, in) of every GEMM a block runs on its tokens' rows."""
    return tuple(tuple(m.weight.shape) for m in block.modules() if isinstance(m, torch.nn.Linear))  # type: ignore[misc]
