"""Markdown tables and matplotlib plots (Agg backend) of scenario runs."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from continual_mem.units import human_size

from .runner import RunResult

TABLE2_HEADERS = ("Full", "Head only", "Head + Class", "1", "5", "10", "20")
TABLE2_MEMORY_SIZES = (1, 5, 10, 20)


def table2_columns(attention: str) -> tuple[str, ...]:
    """The run labels under TABLE2_HEADERS, with memory in the given attention mode."""
    prefix = "memory-full-" if attention == "full" else "memory-"
    return ("full-ft", "head-only", "head-class", *(f"{prefix}{m}" for m in TABLE2_MEMORY_SIZES))


#: Every run label Table 2 shows (its cells are averaged over seeds).
TABLE2_COLUMNS = tuple(dict.fromkeys((*table2_columns("full"), *table2_columns("reuse"))))


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def human_count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return pct(values[0])
    return f"{pct(statistics.mean(values))} ± {pct(statistics.stdev(values))}"


def backbone_text(backbone: dict[str, str]) -> str:
    """`name (timm `arch`, weights sha256 `0123456789ab`, from SOURCE)`: a run's recorded provenance."""
    return (
        f"{backbone['name']} (timm `{backbone['architecture']}`, weights sha256 `{backbone['weights_sha256'][:12]}`, "
        f"from {backbone['source']})"
    )


def _channels(n: int) -> str:
    return f"{n} channel{'s' if n != 1 else ''}"


def input_text(details: dict[str, Any]) -> str:
    """What was resized to what, as `scenarios.benchmarks.input_details` recorded it."""
    (h, w), (mh, mw) = details["native_size"], details["model_size"]
    mean, std = (", ".join(f"{v:.3g}" for v in details[k]) for k in ("mean", "std"))
    return (
        f"{h}x{w} px, {_channels(details['native_channels'])} -> {mh}x{mw} px, "
        f"{_channels(details['model_channels'])}, normalised with mean ({mean}) and std ({std}); "
        f"resized {details['resized']}"
    )


def setup_lines(results: Sequence[RunResult]) -> list[str]:
    """The backbone, the images it got and the budget of `results` (each once)."""
    lines: dict[str, None] = {}
    for r in results:
        backbone = r.config.get("backbone")
        lines[f"backbone {backbone_text(backbone)}" if isinstance(backbone, dict) else "backbone not recorded"] = None
        if "input" in r.config:
            lines[f"images of {r.scenario}: {input_text(r.config['input'])}"] = None
        budget = r.config.get("budget", {})
        if budget:
            precision = "bf16 autocast" if r.config.get("amp") else "float32"
            lines[
                f"on {r.config.get('device', 'cpu')} in {precision}, batch {budget['batch_size']} "
                f"(evaluation {budget['eval_batch_size']}), {budget['epochs']} epoch(s) per experience"
            ] = None
    return list(lines)


def comparison_table(results: Sequence[RunResult]) -> str:
    """One row per run: accuracy, forgetting, BWT, task-id accuracy, costs, time."""
    head = (
        "| strategy | avg acc % | forgetting % | BWT % | task-id acc % | trainable params / task "
        "| bytes stored / task | backbone passes to serve all | wall time |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        m = r.metrics
        rows.append(
            f"| {r.strategy} | {pct(m['average_accuracy'])} | {pct(m['forgetting'])} | {pct(m['bwt'])} "
            f"| {pct(m.get('task_id_accuracy'))} | {human_count(m['trainable_params_per_task'])} "
            f"| {human_size(m['stored_bytes_per_task'])} | {m['backbone_passes_to_serve_all']:g} "
            f"| {r.wall_time_s:.0f} s |"
        )
    return head + "\n".join(rows) + "\n"


def routing_table(results: Sequence[RunResult]) -> str:
    """Class protocol: task-id accuracy of every routing method, per memory-strategy run."""
    routed = [r for r in results if len(r.metrics.get("task_id_accuracy_by_route") or {}) > 1]
    if not routed:
        return ""
    methods = list(routed[0].metrics["task_id_accuracy_by_route"])
    head = "| strategy | " + " | ".join(methods) + " |\n|---|" + "---:|" * len(methods) + "\n"
    rows = [
        f"| {r.strategy} | " + " | ".join(pct(r.metrics["task_id_accuracy_by_route"].get(k)) for k in methods) + " |"
        for r in routed
    ]
    return head + "\n".join(rows) + "\n"


def table2(cells: dict[str, dict[str, list[float]]], params: dict[str, dict[str, float]] | None = None) -> str:
    """The paper's Table 2 layout: average accuracy (%) per row and column, mean ± std over seeds.

    `cells[row][header]` holds one average accuracy per seed, headers from TABLE2_HEADERS;
    `params[row][header]` (optional) adds a row of trainable parameters per task after that row.
    """
    head = "| data set | " + " | ".join(TABLE2_HEADERS) + " |\n|---|" + "---:|" * len(TABLE2_HEADERS) + "\n"
    rows = []
    for row, by_header in cells.items():
        rows.append(
            f"| {row} | "
            + " | ".join(_mean_std(by_header[h]) if by_header.get(h) else "–" for h in TABLE2_HEADERS)
            + " |"
        )
        if params and row in params:
            rows.append(
                "| *params / task* | "
                + " | ".join(human_count(params[row][h]) if h in params[row] else "–" for h in TABLE2_HEADERS)
                + " |"
            )
    return head + "\n".join(rows) + "\n"


def plot_accuracy_matrix(result: RunResult, path: Path) -> Path:
    """Heatmap of R[i][j] (rows: after experience i; columns: experience j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.accuracy_matrix)
    grid = [[row[j] if j < len(row) else math.nan for j in range(n)] for row in result.accuracy_matrix]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(i + 1):
            ax.text(
                j,
                i,
                f"{100 * grid[i][j]:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if grid[i][j] < 0.6 else "black",
            )
    ax.set_xticks(range(n), [str(j) for j in range(n)])
    ax.set_yticks(range(n), [str(i) for i in range(n)])
    ax.set_xlabel("evaluated experience")
    ax.set_ylabel("after training experience")
    ax.set_title(f"{result.strategy} ({result.protocol})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_curves(results: Sequence[RunResult], path: Path, title: str) -> Path:
    """Average accuracy over the experiences seen so far, after each experience, per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(results):
        ys = [100 * sum(row) / len(row) for row in r.accuracy_matrix]
        own = r.strategy.startswith(("memory", "head"))  # the memory strategy's variants: solid lines
        ax.plot(
            range(1, len(ys) + 1),
            ys,
            marker="o",
            markersize=3,
            label=r.strategy,
            color=colors[i % len(colors)],
            linestyle="-" if own else "--",
        )
    ax.set_xticks(range(1, max(len(r.accuracy_matrix) for r in results) + 1))
    ax.set_xlabel("experiences learned")
    ax.set_ylabel("average accuracy on seen experiences (%)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Sequence[RunResult], folder: Path, title: str) -> Path:
    """report.md (tables, plot links), results.json and the plots, in `folder`; returns report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    sections = [f"# {title}\n", "## Setup\n", *(f"- {line}" for line in setup_lines(results)), ""]
    for protocol in ("task", "class"):
        runs = [r for r in results if r.protocol == protocol]
        if not runs:
            continue
        curves = plot_accuracy_curves(runs, folder / f"curves-{protocol}.png", f"{title} ({protocol}-incremental)")
        sections.append(f"## {protocol}-incremental\n\n{comparison_table(runs)}")
        routing = routing_table(runs)
        if routing:
            sections.append(f"Task-id accuracy by routing method (%):\n\n{routing}")
        sections.append(f"![accuracy over experiences]({curves.name})\n")
        for r in runs:
            image = plot_accuracy_matrix(r, folder / f"matrix-{protocol}-{r.strategy}.png")
            sections.append(f"![{r.strategy}]({image.name})")
        sections.append("")
    path = folder / "report.md"
    path.write_text("\n".join(sections) + "\n")
    return path
