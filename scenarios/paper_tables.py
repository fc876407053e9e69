"""The paper's Table 4 (memory against adapters, and both) and Table 5 (what each regime costs),
rendered for docs/results.md from the runs and from `scenarios.costs`' measurements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .bottleneck import count_bottleneck_parameters
from .report import pct
from .runner import RunResult

#: Table 4's columns: run label -> header.
TABLE4_COLUMNS = {
    "memory-full-5": "memory-5, full attention",
    "memory-5": "memory-5, reuse",
    "adapter-5": "adapter-5",
    "memory-5+adapter-5": "memory-5 + adapter-5",
}
#: The paper's Table 4 (iNaturalist, ViT-B): accuracy (%) and trainable parameters per task, by column.
PAPER_TABLE4 = {
    "accuracy": {"memory-full-5": "50.1", "adapter-5": "49.9", "memory-5+adapter-5": "50.3"},
    "params": {"memory-full-5": "46K", "adapter-5": "737K"},
}
#: The paper's Table 5 for memory with 5 tokens (ViT-B): extra FLOPs and parameters.
PAPER_MEM5_FLOPS = 25e6
PAPER_MEM5_PARAMS = 768 * 12 * 5
#: Table 5's architecture whose counts Table 4 quotes.
PARAMS_AT = "ViT-B/16"


def _row(title: str, cells: Sequence[str]) -> str:
    return f"| {title} | " + " | ".join(cells) + " |"


def _by_label(results: Sequence[RunResult], scenario: str, protocol: str) -> dict[str, RunResult]:
    return {r.strategy: r for r in results if (r.scenario, r.protocol) == (scenario, protocol)}


def _scenarios(results: Sequence[RunResult]) -> list[str]:
    return list(dict.fromkeys(r.scenario for r in results if r.strategy in TABLE4_COLUMNS))


def _rates(run: RunResult) -> str:
    """The base rates a run trained with (chosen on validation for Table 2's regimes, else the budget's)."""
    budget = run.config.get("budget") or {}
    return f"{budget['lr_adapter']:g} / {budget['lr_head']:g}" if "lr_adapter" in budget else ""


def _vit_b_params(costs: dict[str, Any] | None) -> dict[str, int]:
    """Measured trainable parameters per task at PARAMS_AT, head excluded, by Table 4 column."""
    if not costs or PARAMS_AT not in costs["architectures"]:
        return {}
    table = costs["architectures"][PARAMS_AT]
    head = (table["dim"] + 1) * costs["head_classes"]
    return {r["regime"]: r["params"] - head for r in table["rows"] if r["regime"] in TABLE4_COLUMNS}


def table4_markdown(results: Sequence[RunResult], costs: dict[str, Any] | None, seed: int) -> list[str]:
    """Table 4's layout: the paper's row, then ours per data set and protocol, params and passes."""
    labels = list(TABLE4_COLUMNS)
    lines = [
        _row("", list(TABLE4_COLUMNS.values())),
        "|---|" + "---:|" * len(labels),
        _row("paper, iNaturalist, accuracy (%)", [PAPER_TABLE4["accuracy"].get(c, "–") for c in labels]),
        _row("paper, params / task (ViT-B)", [PAPER_TABLE4["params"].get(c, "–") for c in labels]),
    ]
    backbone_params: dict[str, float] = {}
    rates: dict[str, dict[str, str]] = {}  # scenario -> label -> rates
    passes: dict[str, dict[str, str]] = {c: {} for c in labels}
    for scenario in _scenarios(results):
        for protocol in ("task", "class"):
            runs = _by_label(results, scenario, protocol)
            if not any(c in runs for c in labels):
                continue
            cells = [pct(runs[c].metrics["average_accuracy"]) if c in runs else "–" for c in labels]
            lines.append(_row(f"ours, {scenario}, {protocol}-incremental, accuracy (%)", cells))
            for c in labels:
                if c in runs:
                    backbone_params.setdefault(c, runs[c].metrics["trainable_params_per_task"])
                    rates.setdefault(scenario, {}).setdefault(c, _rates(runs[c]))
                    passes[c].setdefault(protocol, f"{runs[c].metrics['backbone_passes_to_serve_all']:g}")
    if backbone_params:
        cells = [f"{backbone_params[c]:,.0f}" if c in backbone_params else "–" for c in labels]
        lines.append(_row("ours, params / task, this backbone (measured, head included)", cells))
    for scenario, chosen in rates.items():
        if any(chosen.values()):
            row = f"ours, {scenario}, learning rates: tokens and adapters / head"
            lines.append(_row(row, [chosen.get(c) or "–" for c in labels]))
    vit_b = _vit_b_params(costs)
    if vit_b:
        lines.append(
            _row(f"ours, params / task at {PARAMS_AT} (measured, head excluded)", [f"{vit_b[c]:,}" for c in labels])
        )
    if any(passes.values()):
        cells = [", ".join(f"{p}: {n}" for p, n in passes[c].items()) or "–" for c in labels]
        lines.append(_row("ours, backbone passes per image to serve all 5 tasks", cells))
    return [
        f"Average accuracy (%) after the last experience's evaluation, seed {seed}, and trainable parameters per "
        "task. Same schedule, backbone and data for every column; each task owns its class token and head, plus "
        "its memory, its adapters, or both. Each column trains at the rates chosen for it on validation data, per "
        "data set (when the document chose them; memory with full attention at memory-5's).",
        "",
        *lines,
        "",
        *_table4_notes(costs),
    ]


def _table4_notes(costs: dict[str, Any] | None) -> list[str]:
    """How the counts are made, and how they relate to the paper's 46K and 737K."""
    if not costs or PARAMS_AT not in costs["architectures"]:
        return []
    table = costs["architectures"][PARAMS_AT]
    depth, dim = table["depth"], table["dim"]
    memory = depth * 5 * dim
    adapters = count_bottleneck_parameters(depth, dim, 5)
    weights_only = depth * 2 * 2 * dim * 5
    paper_adapters = 737_280
    return [
        "How the counts are made: on this backbone, the parameters each experience's optimizer updates "
        "(`TrainableCounter`), averaged over the tasks; at "
        f"{PARAMS_AT} (depth {depth}, width {dim}), the trainable tensors a new task gets on a meta-device model "
        f"(`scenarios/costs.py`), its head left out. memory-5: {depth} × 5 × {dim} = {memory:,} memory + {dim} "
        f"class token = {memory + dim:,}. adapter-5: 2 adapters per block × {depth} blocks × ({dim}×5 + 5 + 5×{dim} "
        f"+ {dim}) = {adapters:,} + {dim} class token = {adapters + dim:,}. memory-5 + adapter-5: "
        f"{memory + adapters + dim:,}. A head adds ({dim} + 1) × C.",
        "",
        f"The paper's 46K is the memory alone ({depth} × 5 × {dim} = {memory:,}), our count without class token. "
        f"Its 737K is not bottleneck 5: {paper_adapters:,} = 16 × {memory:,} = {dim} × 960, and a Houlsby pair per "
        f"block holds 4 × {dim} × R weights, so 737K is {depth} blocks × 4 × {dim} × 20, i.e. bottleneck 20 "
        f"without biases (or 40 with one adapter per block, or 80 with one projection). Bottleneck 5 has "
        f"{weights_only:,} weights ({adapters:,} with biases), about a quarter of the paper's figure; we run "
        "bottleneck 5 as the paper's text says and report our count.",
        "",
        "Adapters change every token from the first block on, so no backbone pass is shared: serving T tasks "
        "takes T passes, and the class-incremental protocol one more, the frozen pass whose features route a "
        "sample to its task. Memory in reuse mode serves every task from one pass.",
        "",
    ]


def _m(flops: float) -> str:
    return f"{flops / 1e6:+,.1f}M"


def _passes(row: dict[str, Any]) -> str:
    if row["regime"].startswith(("adapter", "memory-5+adapter")):
        return "T (class-IL: T + 1)"
    return row["passes"]


def table5_markdown(costs: dict[str, Any] | None) -> list[str]:
    """Table 5's layout, one table per architecture, and the paper's figures next to ours."""
    if not costs:
        return ["No cost measurements were kept with these runs (`cmem scenario results` measures them)."]
    shared = costs["shared_tasks"]
    out = [
        "Measured with `torch.utils.flop_counter.FlopCounterMode` on the passes the scenarios run, one 224 px "
        f"image, random weights on the meta device (`scenarios/costs.py`, torch {costs['torch']}). FLOPs count "
        "matrix products, convolutions and attention (2 per multiply-add), not norms, activations or additions. "
        f"Trainable parameters per task include a head of {costs['head_classes']} classes. A task's memory keys "
        "and values are computed once per task and cached, not per image. Reuse: one task alone in the pass, and "
        f"the extra FLOPs per task when {shared} tasks share one pass (each task's class token also scores the "
        "other tasks' tokens and memories, masked, in the one fused attention call, so the cost per task grows a "
        "little with T).",
        "",
    ]
    for label, table in costs["architectures"].items():
        out += [
            f"**{label}** (timm `{table['architecture']}`, {table['tokens']} tokens per image)",
            "",
            "| regime | trainable params / task | GFLOPs / image, one task | extra over frozen, one task "
            f"| extra per task, {shared} tasks in one pass | backbone passes to serve T tasks |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for row in table["rows"]:
            shared_extra = _m(row["shared_extra_flops"]) if row["shared_extra_flops"] is not None else "–"
            out.append(
                f"| {row['regime']} | {row['params']:,} | {row['flops'] / 1e9:.2f} | {_m(row['extra_flops'])} "
                f"| {shared_extra} | {_passes(row)} |"
            )
        out.append("")
    out += _table5_notes(costs)
    return out


def _table5_notes(costs: dict[str, Any]) -> list[str]:
    rows = {a: {r["regime"]: r for r in t["rows"]} for a, t in costs["architectures"].items()}
    full5 = ", ".join(
        f"{_m(r['memory-full-5']['extra_flops'])} at {a}" for a, r in rows.items() if "memory-full-5" in r
    )
    reuse5 = ", ".join(f"{_m(r['memory-5']['extra_flops'])} at {a}" for a, r in rows.items() if "memory-5" in r)
    return [
        f"The paper (Table 5, ViT-B): Mem(5) about {PAPER_MEM5_FLOPS / 1e6:.0f}M extra FLOPs and 768 × 12 × 5 = "
        f"{PAPER_MEM5_PARAMS:,} parameters. Our memory tensor has the same {PAPER_MEM5_PARAMS:,} numbers (the "
        "task's class token and head come on top). Our extra FLOPs for memory-5: with full attention, every token "
        f"attends to 5 more keys in every block ({full5}); the paper's figure lies between our ViT-B/32 and "
        "ViT-B/16 counts and it does not say how it counts. In reuse mode a task pays for its own class token "
        f"through every block ({reuse5}, almost all of it the token's projections and MLP, the same for Head "
        "only and Class token, which run the same way here), and in exchange all tasks share one backbone pass; "
        "full attention and adapters pay a whole pass per task.",
        "",
    ]


def paper_sections(results: Sequence[RunResult], costs: dict[str, Any] | None, seed: int) -> list[str]:
    """docs/results.md's Table 4 and Table 5 sections (`results`: the first seed's runs)."""
    return [
        "## Table 4 layout: memory against bottleneck adapters, and both",
        "",
        *table4_markdown(results, costs, seed),
        "## Table 5 layout: what each regime costs",
        "",
        *table5_markdown(costs),
    ]
