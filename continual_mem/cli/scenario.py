"""`cmem scenario ...`: run, compare and list continual-learning scenario runs; regenerate results.

The commands drive the `scenarios` package (Avalanche). The group expects, in the click context
object, a zero-argument `open_store()` returning a `store.TaskStore` (runs are then recorded
there); without one, runs are not recorded, and only the built-in backbones (`demo`, `random`)
or a one-off `--model --weights` can be used. This module holds the group with `run` and `runs`;
`compare` and `results` are in `scenario_compare`, the shared options and the choices they gather
into in `scenario_options`, opening the store, loading the backbone and recording runs in
`scenario_setup`. Importing it imports neither torch, timm nor Avalanche: every command imports what
it needs; the strategies' names and help come from the registry (`scenarios.strategies`), which
imports none of them either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from scenarios.strategies import help_table, help_text

from .output import emit, json_option
from .scenario_compare import compare_command, results_command
from .scenario_options import (
    POSITIVE,
    PROTOCOL_CHOICES,
    BackboneChoice,
    DeviceChoice,
    SplitChoice,
    run_budget,
    scenario_options,
)
from .scenario_setup import (
    check_memory_sizes,
    clean_errors,
    open_store,
    prepared,
    record_run,
    store_errors,
    summary_line,
)


@click.group("scenario")
def scenario_group() -> None:
    """Continual-learning scenarios (Avalanche): the memory-token strategy against baselines."""


@scenario_group.command("run", epilog=help_table())
@click.argument("name")
@click.option(
    "--strategy",
    "-s",
    "strategy_name",
    required=True,
    help=help_text(),
)
@click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES), default="task", show_default=True)
@click.option("--memory", "-m", type=int, default=None, help="Memory tokens per layer (strategy memory; default 5).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=POSITIVE, default=None, help="Epochs per experience (default: the budget's).")
@click.option(
    "--report-dir", type=click.Path(path_type=Path), default=None, help="Also write a report (markdown + plots) here."
)
@json_option
@scenario_options
@click.pass_context
def run_command(
    ctx: click.Context,
    name: str,
    strategy_name: str,
    protocol: str,
    memory: int | None,
    seed: int,
    epochs: int | None,
    report_dir: Path | None,
    as_json: bool,
    backbone: BackboneChoice,
    devices: DeviceChoice,
    split: SplitChoice,
    route: str,
    progress: bool | None,
) -> None:
    """Train one strategy through scenario NAME and evaluate it after every experience.

    NAME: split-digits, shifted-digits, folder:PATH (one sub-folder per class) or
    torchvision:SET[:ROOT] (MNIST, FashionMNIST, CIFAR10, CIFAR100 already on disk). Images are
    resized to the backbone's input and normalised as timm's data config of that backbone says.

    Reuse-mode runs (memory-M, head-only, head-class) keep each image's frozen-backbone keys and
    values in memory (up to 2 GiB; not with random augmentation), so only the first epoch runs the
    backbone on it; results are the same as without. `compare` and `results` share that cache
    between the runs of each worker process.
    """
    with clean_errors():
        from scenarios.backbone_cache import BackboneCache
        from scenarios.runner import StrategySpec, run_strategy

        spec = StrategySpec.parse(strategy_name, memory)
        key = split.key(name, protocol)
        store, model, provenance = prepared(ctx, backbone, devices)
        check_memory_sizes(model, [spec])
        scenario = key.build(model)
        budget = run_budget(epochs, seed, False, devices)
        result = run_strategy(
            scenario,
            spec,
            model,
            budget,
            devices.device,
            route,
            progress,
            amp=devices.amp,
            backbone_cache=BackboneCache(),
        )
        result.config["backbone"] = provenance
        run_id = record_run(store, result)
        if report_dir is not None:
            from scenarios.report import write_report

            write_report([result], report_dir, f"{name}: {spec.label}")

    def show() -> None:
        from scenarios.report import setup_lines

        click.echo(summary_line(result, run_id))
        for line in setup_lines([result]):
            click.echo(f"  {line}")
        for i, row in enumerate(result.accuracy_matrix):
            click.echo(f"  after experience {i}: " + " ".join(f"{100 * a:5.1f}" for a in row))

    emit(as_json, {"id": run_id, **result.to_dict()}, show)


@scenario_group.command("runs")
@click.option("--scenario", default=None, help="Only runs of this scenario.")
@click.option("--strategy", default=None, help="Only runs of this strategy.")
@json_option
@click.pass_context
def runs_command(ctx: click.Context, scenario: str | None, strategy: str | None, as_json: bool) -> None:
    """The scenario runs kept in the task store, oldest first."""
    store = open_store(ctx, required=True)
    try:
        runs = store.list_scenario_runs(scenario=scenario, strategy=strategy)
    except store_errors() as exc:
        raise click.ClickException(f"cannot read the task store: {exc}") from None

    def show() -> None:
        if not runs:
            click.echo("no scenario runs")
            return
        click.echo(
            f"{'id':>4}  {'scenario':<14} {'protocol':<8} {'strategy':<12} {'backbone':<10} {'avg acc':>8} "
            f"{'forget':>7} {'wall':>7}  created"
        )
        for r in runs:
            m = r.metrics
            click.echo(
                f"{r.id:>4}  {r.scenario:<14} {r.protocol:<8} {r.strategy:<12} {_backbone_name(r.config):<10} "
                f"{100 * m.get('average_accuracy', 0):7.1f}% {100 * m.get('forgetting', 0):6.1f}% "
                f"{r.wall_time_s or 0:6.0f}s  {r.created_at:%Y-%m-%d %H:%M}"
            )

    emit(as_json, runs, show)


def _backbone_name(config: dict[str, Any]) -> str:
    """The recorded backbone's name (runs recorded before issue 15 kept only `demo` or `random`)."""
    backbone = config.get("backbone", "-")
    return str(backbone.get("name") if isinstance(backbone, dict) else backbone)


scenario_group.add_command(compare_command)
scenario_group.add_command(results_command)

COMMANDS = [scenario_group]
