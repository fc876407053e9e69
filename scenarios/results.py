"""Regenerate docs/results.md: every scenario, protocol and strategy, then the tables and checks."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from .benchmarks import Protocol, ScenarioError, benchmarks_text
from .costs import measure_costs
from .l2p import POOL_SIZE, PROMPT_LENGTH, TOP_K
from .lr_selection import Selection, chosen_budget, chosen_table, rate_label, selection_requests, selections
from .metrics import definitions as metric_definitions
from .paper_tables import paper_sections
from .report import (
    TABLE2_COLUMNS,
    TABLE2_HEADERS,
    comparison_table,
    input_text,
    pct,
    routing_table,
    table2,
    table2_columns,
    write_report,
)
from .run_journal import JOURNAL, RunJournal
from .runner import (
    QUICK_BUDGET,
    Budget,
    RunRequest,
    RunResult,
    ScenarioKey,
    compare_specs,
)
from .strategies.finetuning import EWC_LAMBDA, LWF_ALPHA, LWF_TEMPERATURE, REPLAY_MEMORY
from .strategy import DEFAULT_ROUTE, DEFAULT_SHRINKAGE

#: Every run of `generate_results`, with what the document needs, kept in the report folder.
ALL_RESULTS = "all-results.json"
#: What docs/results.md covers: scenario -> protocols.
RESULT_PLAN: dict[str, tuple[Protocol, ...]] = {"split-digits": ("task", "class"), "shifted-digits": ("task", "class")}


def generate_results(
    backbone: VisionTransformer,
    provenance: dict[str, str],
    seeds: Sequence[int],
    quick: bool,
    report_dir: Path,
    device: str = "cpu",
    limit_per_class: int | None = None,
    jobs: int = 1,
    progress: bool | None = None,
    record: Callable[[RunResult], Any] | None = None,
    command: str = "cmem scenario results",
    budget: Budget | None = None,
    amp: bool = False,
    fresh: bool = False,
    say: Callable[[str], Any] = lambda text: None,
) -> str:
    """Run the whole plan (Table 2 cells over every seed, the rest on the first) and write the
    reports; returns the markdown of docs/results.md.

    Table 2's and Table 4's regimes first choose their learning rates on validation splits of the
    training data (`scenarios.lr_selection`, not recorded in the store), alongside the runs that
    need no choice; then the chosen rates train and test the rest.

    Every finished run is kept in the report folder's journal (`scenarios.run_journal`) at once,
    and a later call with the same backbone and plan runs only what is not there yet, unless
    `fresh`; `say` hears how many runs were found.

    `provenance`: the backbone's name, timm architecture, weights sha256 and source, recorded with
    every run and named in the document; `budget`: the default (or quick) one unless given.
    """
    base = budget or (QUICK_BUDGET if quick else Budget())
    keys = [
        ScenarioKey(n, p, limit_per_class=limit_per_class) for n, protocols in RESULT_PLAN.items() for p in protocols
    ]
    select = selection_requests(
        [k for k in keys if k.protocol == "task"], compare_specs("task"), replace(base, seed=seeds[0]), device, amp
    )
    requests = []
    for key in keys:
        for spec in compare_specs(key.protocol):
            in_table2 = key.protocol == "task" and spec.label in TABLE2_COLUMNS
            requests += [
                RunRequest(key, spec, replace(base, seed=s), device, amp=amp)
                for s in (seeds if in_table2 else seeds[:1])
            ]

    journal_path = report_dir / JOURNAL
    if fresh:
        journal_path.unlink(missing_ok=True)
    journal = RunJournal(journal_path, provenance["weights_sha256"])

    def keep(request: RunRequest, result: RunResult) -> None:
        result.config.update(backbone=provenance, quick=quick)
        if record is not None and not request.scenario.validation:
            record(result)

    def run(batch: Sequence[RunRequest]) -> list[RunResult]:
        return journal.run(batch, backbone, jobs, keep, progress)

    if journal:
        say(f"resuming: {len(journal)} run(s) kept in {journal_path} by an earlier invocation (--fresh to start over)")
    tuned = [i for i, r in enumerate(requests) if rate_label(r.spec.label) is not None]
    fixed = sorted(set(range(len(requests))) - set(tuned))
    first = run([*select, *(requests[i] for i in fixed)])
    chosen = selections(select, first[: len(select)])
    for i in tuned:
        r = requests[i]
        requests[i] = replace(r, budget=chosen_budget(r.budget, r.scenario.name, r.spec.label, chosen))
    second = run([requests[i] for i in tuned])
    by_index = dict(zip(fixed, first[len(select) :])) | dict(zip(tuned, second))
    results = [by_index[i] for i in range(len(requests))]
    for name, protocols in RESULT_PLAN.items():
        for protocol in protocols:
            first = [r for r in _first_seed(results, seeds[0]) if (r.scenario, r.protocol) == (name, protocol)]
            write_report(first, report_dir / f"{name}-{protocol}", f"{name}, {protocol}-incremental")
    run = {
        "facts": backbone_facts(backbone, provenance),
        "budget": asdict(base),
        "seeds": list(seeds),
        "quick": quick,
        "command": command,
        "machine": machine_text(device),
        "elapsed_s": journal.elapsed_s,
        "invocations": journal.earlier_invocations + 1,
        "generated_at": datetime.now(UTC).isoformat(),
        "results": [r.to_dict() for r in results],
        "lr_selection": [c.to_dict() for c in chosen],
        "costs": measure_costs(),  # Table 5: parameters and FLOPs per regime at ViT-B (meta device, ~1 min)
    }
    (report_dir / ALL_RESULTS).write_text(json.dumps(run, indent=1))
    return render_results(report_dir)


#: Wall times measured on this machine kind (2 CPU cores), before and after issue 10.
MEASURED_TIMES: dict[str, tuple[str, str]] = {
    "cmem scenario results --seeds 0,1,2": ("43 min (idle)", "93.4 min (idle, 166 runs)"),
    "cmem scenario compare split-digits": ("878 s (idle, 30 runs)", "1,269 s (idle, 34 runs)"),
}
LR_NOTE = (
    "Each Table 2 regime, and Table 4's adapter-5 and memory-5+adapter-5, trains once per candidate rate "
    "on a validation split of its scenario (80% of each class's training images to train, 20% to score; "
    "the test data is never read), task protocol, first seed; "
    "the best validation average accuracy wins. Memory with full attention uses the rate chosen for the same "
    "size in reuse mode. Every run of those labels (both protocols, every seed) trains with the chosen rate; "
    "the other strategies keep the budget's rates."
)


def timing_table(command: str, elapsed_s: float, quick: bool) -> str:
    """Markdown: the measured before/after wall times, this run's own where it is one of them."""
    lines = ["| command | before | after |", "|---|---:|---:|"]
    for name, (before, after) in MEASURED_TIMES.items():
        if not quick and command.startswith(name):
            after = f"{elapsed_s / 60:.1f} min (this run)"
        lines.append(f"| `{name}` | {before} | {after} |")
    return "\n".join(lines)


def render_results(report_dir: Path) -> str:
    """docs/results.md from the runs an earlier `generate_results` kept in `report_dir`."""
    path = report_dir / ALL_RESULTS
    if not path.is_file():
        raise ScenarioError(f"{path} does not exist: run `cmem scenario results` without --render-only first")
    run = json.loads(path.read_text())
    results = [RunResult.from_dict(r) for r in run["results"]]
    return results_markdown(
        results,
        run["facts"],
        Budget(**run["budget"]),
        run["seeds"],
        run["quick"],
        run["command"],
        run["elapsed_s"],
        datetime.fromisoformat(run["generated_at"]),
        run.get("machine") or machine_text("cpu"),  # kept since issue 15; older folders: this machine
        [Selection.from_dict(c) for c in run.get("lr_selection", [])],  # kept since issue 10
        costs=run.get("costs"),  # kept since issue 11
        invocations=run.get("invocations", 1),
    )


def _invocations_text(invocations: int) -> str:
    if invocations == 1:
        return ""
    return f", summed over {invocations} invocations (stopped and resumed; each to its last kept run)"


def machine_text(device: str) -> str:
    """Where the runs ran: CPU, torch, threads, and the GPU's name on CUDA."""
    text = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    return text + (f", {torch.cuda.get_device_name(device)}" if torch.device(device).type == "cuda" else "")


def _shrinkage_text() -> str:
    return "estimated by OAS" if DEFAULT_SHRINKAGE is None else f"{DEFAULT_SHRINKAGE:g}"


def _builtin_summary(spec: str) -> str:
    """`builtin:shapes?n=..` -> the first docstring line of `continual_mem.data.shapes`."""
    from continual_mem import data

    builder = getattr(data, spec.removeprefix("builtin:").partition("?")[0], None)
    doc = (builder.__doc__ or "").strip() if builder is not None else ""
    return doc.splitlines()[0].rstrip(".") if doc else spec


def backbone_facts(backbone: VisionTransformer, provenance: dict[str, str]) -> dict[str, Any]:
    """What the document says about the backbone: its provenance, geometry and pretraining."""
    from continual_mem import pretrain
    from continual_mem.backbone import backbone_config

    facts: dict[str, Any] = {
        "name": provenance["name"],
        "architecture": provenance["architecture"],
        "source": provenance["source"],
        "config": backbone_config(backbone),
        "parameters": sum(p.numel() for p in backbone.parameters()),
        "sha256": provenance["weights_sha256"],
        "pretraining": None,
    }
    if provenance["name"] == "demo":
        facts["pretraining"] = (
            f"`{pretrain.DEMO_DATA}` ({_builtin_summary(pretrain.DEMO_DATA)}; no image of the downstream data "
            f"sets), {pretrain.DEMO_EPOCHS} epochs from scratch on this machine. No pretrained ViT weights "
            "reach this machine, so this small backbone is the project's own"
        )
    elif provenance["name"] == "random":
        facts["pretraining"] = "none: random weights (smoke test only, numbers mean nothing)"
    return facts


def _runs(results: Sequence[RunResult], scenario: str, protocol: str, label: str) -> list[RunResult]:
    return [r for r in results if (r.scenario, r.protocol, r.strategy) == (scenario, protocol, label)]


def _mean_accuracy(results: Sequence[RunResult], scenario: str, protocol: str, label: str) -> float | None:
    runs = _runs(results, scenario, protocol, label)
    return statistics.mean(r.metrics["average_accuracy"] for r in runs) if runs else None


def _first_seed(results: Sequence[RunResult], seed: int) -> list[RunResult]:
    return [r for r in results if r.config["budget"]["seed"] == seed]


def checks(results: Sequence[RunResult]) -> list[str]:
    """The issue's claims on every data set, each with the measured numbers and whether it holds."""
    lines = []
    for scenario in RESULT_PLAN:
        lines += _memory_claims(results, scenario)
    memory_runs = [r for r in results if r.protocol == "task" and r.strategy.startswith(("memory", "head", "adapter"))]
    if memory_runs:
        worst = max(abs(r.metrics["forgetting"]) for r in memory_runs)
        lines.append(
            f"- Forgetting of every memory / head / adapter run, task-incremental ({len(memory_runs)} runs): max |F| = "
            f"{worst!r} (**{'exactly 0' if worst == 0.0 else 'not 0'}**)."
        )
    for scenario in RESULT_PLAN:
        for protocol in ("task", "class"):
            naive = _runs(results, scenario, protocol, "naive")
            if naive:
                f = naive[0].metrics["forgetting"]
                lines.append(
                    f"- Naive fine-tuning forgets, {scenario} {protocol}-incremental: F = {pct(f)}% "
                    f"(**{'holds' if f > 0 else 'does not hold'}**)."
                )
    for scenario in RESULT_PLAN:
        m5c, l2p = (
            _mean_accuracy(results, scenario, "class", "memory-5"),
            _mean_accuracy(results, scenario, "class", "l2p"),
        )
        if None not in (m5c, l2p):
            lines.append(
                f"- {scenario}, class-incremental: memory-5 {pct(m5c)}% vs L2P {pct(l2p)}% on the same backbone "
                f"(**{'beats L2P' if m5c > l2p else 'does not beat L2P'}**)."
            )
    return lines


def _memory_claims(results: Sequence[RunResult], scenario: str) -> list[str]:
    """memory-5 (both attention modes) >= head-only + 2 points and within 3 of full fine-tuning, task protocol."""
    lines = []
    head, full = (_mean_accuracy(results, scenario, "task", label) for label in ("head-only", "full-ft"))
    for label, how in (("memory-full-5", "full attention"), ("memory-5", "reuse, one pass")):
        m5 = _mean_accuracy(results, scenario, "task", label)
        if None not in (m5, head, full):
            gap, behind = 100 * (m5 - head), 100 * (full - m5)
            lines.append(
                f"- {scenario}, task-incremental, memory-5 ({how}): {pct(m5)}% vs head-only {pct(head)}% "
                f"({gap:+.1f} points; claim >= +2: **{'holds' if gap >= 2 else 'does not hold'}**) and vs per-task "
                f"full fine-tuning {pct(full)}% ({behind:.1f} points behind; claim <= 3: "
                f"**{'holds' if behind <= 3 else 'does not hold'}**)."
            )
    return lines


def _setup_lines(
    facts: dict[str, Any], budget: Budget, seeds: Sequence[int], results: Sequence[RunResult]
) -> list[str]:
    cfg = facts["config"]
    pretraining = f" **Pretrained on** {facts['pretraining']}." if facts.get("pretraining") else ""
    backbone = (
        f"- **Backbone** `{facts.get('name', 'demo')}`: timm `{facts['architecture']}` at {cfg['img_size']} px "
        f"images, patch {cfg['patch_size']}, depth {cfg['depth']}, width {cfg['embed_dim']}, {cfg['num_heads']} "
        f"heads ({facts['parameters'] / 1e6:.2f}M parameters, weights sha256 `{facts['sha256'][:12]}`"
        f"{', from ' + facts['source'] if facts.get('source') else ''}).{pretraining}"
    )
    data = benchmarks_text()
    inputs = {r.scenario: input_text(r.config["input"]) for r in results if "input" in r.config}
    if inputs:
        data += " Images as the backbone gets them: " + "; ".join(f"{k}: {v}" for k, v in inputs.items()) + "."
    schedule = (
        f"- **Budget, same for every strategy**: {budget.epochs} epochs per experience, batch "
        f"{budget.batch_size}, AdamW, cosine learning rate to 0 within each experience, weight decay "
        f"{budget.weight_decay}; base rate {budget.lr_adapter} for task memory and class tokens, "
        f"{budget.lr_head} for task heads, "
        f"{budget.lr_prompt} for L2P's prompts and head, {budget.lr_finetune} for fine-tuning a whole ViT. "
        f"Seeds: Table 2 cells over {list(seeds)} (mean ± std), everything else seed {seeds[0]}."
    )
    baselines = (
        f"- **Baselines** (Avalanche 0.6.0): Naive, EWC (λ = {EWC_LAMBDA:g}, separate penalties), LwF "
        f"(α = {LWF_ALPHA:g}, T = {LWF_TEMPERATURE:g}), Replay ({REPLAY_MEMORY} samples, experience-balanced) "
        "and Cumulative (joint upper bound) fine-tune the whole ViT with Avalanche's multi-head (task protocol) "
        "or incremental (class protocol) classifier; Full = per-task full fine-tuning (one ViT copy per task); "
        "NCM = nearest class mean (scikit-learn NearestCentroid's centroids) on the frozen, L2-normalised features; L2P = Avalanche's "
        f"LearningToPrompt (pool {POOL_SIZE}, length {PROMPT_LENGTH}, top-{TOP_K}) on our backbone through "
        "`scenarios/l2p.py`."
    )
    routing = (
        "- **Class-incremental task inference** of the memory strategy, from the same single pass: default "
        f"route `{DEFAULT_ROUTE}` (linear discriminant on the frozen backbone's features: running class means "
        f"and one shared covariance, shrinkage {_shrinkage_text()}), then the routed task's own head. The "
        "routing table compares it with nearest class mean (`nmc`), the heads' energy (logsumexp) and "
        "max-softmax."
    )
    return [backbone, data, schedule, baselines, routing]


def _comparison_sections(primary: Sequence[RunResult], seed: int) -> list[str]:
    out: list[str] = []
    for name, protocols in RESULT_PLAN.items():
        for protocol in protocols:
            runs = [r for r in primary if (r.scenario, r.protocol) == (name, protocol)]
            if not runs:
                continue
            out += [f"### {name}, {protocol}-incremental (seed {seed})", "", comparison_table(runs)]
            routing = routing_table(runs)
            if routing:
                out += ["Task-id accuracy by routing method (%), all from the same single pass:", "", routing]
    return out


#: Table 2's memory rows: attention mode -> row title.
TABLE2_ROWS = {"full": "memory: full attention", "reuse": "memory: reuse, one pass"}
TABLE2_NOTE = (
    "Columns as in the paper: Full fine-tuning per task, Head only, Head + Class token, and 1 / 5 / 10 / 20 "
    "memory tokens per layer (each with its own class token and head). Two rows per data set: memory with "
    "full attention (input tokens attend to the task's memory, as in the paper's Table 2; one pass per task "
    "to serve every task) and memory in reuse mode (only the task's class token attends to it; one pass serves "
    "every task). The first three columns are the same runs in both rows."
)
STORED_BYTES_NOTE = (
    "Bytes stored per task count, divided by the number of tasks, every tensor kept beyond the pretrained "
    "backbone: to serve (adapters, a fine-tuned ViT, prompts, class statistics) and to keep learning (replay "
    "buffer, EWC importances and anchors, LwF's previous model, Cumulative's data). Backbone passes are "
    "counted with hooks on the ViTs' patch embeddings while every learned task answers a probe batch."
)


def results_markdown(
    results: Sequence[RunResult],
    facts: dict[str, Any],
    budget: Budget,
    seeds: Sequence[int],
    quick: bool,
    command: str,
    elapsed_s: float,
    generated_at: datetime,
    machine: str,
    chosen: Sequence[Selection] = (),
    costs: dict[str, Any] | None = None,
    invocations: int = 1,
) -> str:
    """The document; `chosen`: the learning rates chosen on validation data; `costs`:
    `scenarios.costs.measure_costs()`'s measurements, for Table 5; `invocations`: how many calls
    of the command ran it (it resumes from its journal), their times summed in `elapsed_s`."""
    cells: dict[str, dict[str, list[float]]] = {}
    params: dict[str, dict[str, float]] = {}
    for name in RESULT_PLAN:
        for attention, title in TABLE2_ROWS.items():
            row, columns = f"{name}, {title}", dict(zip(TABLE2_HEADERS, table2_columns(attention)))
            cells[row] = {
                h: [r.metrics["average_accuracy"] for r in _runs(results, name, "task", c)] for h, c in columns.items()
            }
        params[row] = {  # the same for both attention modes: under the scenario's last row
            h: runs[0].metrics["trainable_params_per_task"]
            for h, c in columns.items()
            if (runs := _runs(results, name, "task", c))
        }
    out = [
        "# Results: memory tokens against continual-learning baselines",
        "",
        f"Generated by `{command}` on {generated_at:%Y-%m-%d %H:%M} UTC in {elapsed_s / 60:.1f} min"
        f"{_invocations_text(invocations)} ({machine}).",
        "",
    ]
    if quick:
        out += [
            "> **Quick run** (1 epoch, few images per class): it checks the pipeline; its numbers mean nothing.",
            "",
        ]
    out += ["## Run time", "", timing_table(command, elapsed_s, quick), ""]
    if chosen:
        out += ["## Learning rates chosen on validation", "", LR_NOTE, "", chosen_table(chosen), ""]
    out += ["## Setup", "", *_setup_lines(facts, budget, seeds, results), ""]
    out += [
        "## Table 2 layout: task-incremental average accuracy (%)",
        "",
        TABLE2_NOTE,
        "",
        table2(cells, params),
        *paper_sections(_first_seed(results, seeds[0]), costs, seeds[0]),
        "## Checks",
        "",
        *checks(results),
        "",
        "## Continual-learning comparison",
        "",
        *_comparison_sections(_first_seed(results, seeds[0]), seeds[0]),
        "## Metrics",
        "",
        "```",
        metric_definitions().strip(),
        "```",
        "",
        STORED_BYTES_NOTE,
        "",
        f"Budget as run: `{asdict(budget)}`.",
        "",
    ]
    return "\n".join(out)
