"""`cmem scenario compare` and `cmem scenario results`: every strategy on one scenario, same
backbone, data, budget and seed, in one table; and docs/results.md regenerated from such runs.

Registered on the `scenario` group by `continual_mem.cli.scenario`. Torch and Avalanche are imported
inside the commands.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from scenarios.strategies import help_table

from .output import emit, json_option
from .scenario_options import (
    DEFAULT_JOBS,
    JOBS_OPTION,
    POSITIVE,
    PROTOCOL_CHOICES,
    QUICK_LIMIT_PER_CLASS,
    THREADS_OPTION,
    BackboneChoice,
    DeviceChoice,
    SplitChoice,
    backbone_options,
    device_options,
    parse_ints,
    run_budget,
    scenario_options,
)
from .scenario_setup import check_memory_sizes, clean_errors, prepared, record_run, summary_line


@click.command("compare", epilog=help_table())
@click.argument("name")
@click.option("--protocol", type=click.Choice((*PROTOCOL_CHOICES, "both")), default="both", show_default=True)
@click.option("--quick", is_flag=True, help=f"CI size: 1 epoch, {QUICK_LIMIT_PER_CLASS} training images per class.")
@click.option("--strategies", default=None, help="Comma-separated subset (default: every strategy of the protocol).")
@click.option("--memory-sizes", default="1,5,10,20", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=POSITIVE, default=None, help="Epochs per experience (default: the budget's).")
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the report goes (default: reports/<name>-<time>).",
)
@json_option
@JOBS_OPTION
@scenario_options
@click.pass_context
def compare_command(
    ctx: click.Context,
    name: str,
    protocol: str,
    quick: bool,
    strategies: str | None,
    memory_sizes: str,
    seed: int,
    epochs: int | None,
    report_dir: Path | None,
    as_json: bool,
    jobs: int | None,
    backbone: BackboneChoice,
    devices: DeviceChoice,
    split: SplitChoice,
    route: str,
    progress: bool | None,
) -> None:
    """Every strategy on scenario NAME, same backbone, data, budget and seed; one table.

    NAME as for `run`. Runs are recorded in the task store and written to a report folder
    (markdown table, accuracy-matrix heatmaps, accuracy over experiences).
    """
    with clean_errors():
        import torch

        from scenarios.report import comparison_table, write_report
        from scenarios.runner import RunRequest, StrategySpec, compare_specs, run_requests

        protocols = PROTOCOL_CHOICES if protocol == "both" else (protocol,)
        sizes = parse_ints(memory_sizes, "--memory-sizes") or []
        wanted = {StrategySpec.parse(s).label for s in strategies.split(",")} if strategies else None
        budget = run_budget(epochs, seed, quick, devices)
        keys = [split.key(name, proto, QUICK_LIMIT_PER_CLASS if quick else None) for proto in protocols]
        store, model, provenance = prepared(ctx, backbone, devices)
        requests = []
        for key in keys:
            key.build(model)  # fail here, in one line, rather than in a worker
            requests += [
                RunRequest(key, spec, budget, devices.device, route, devices.amp)
                for spec in compare_specs(key.protocol, sizes)
                if wanted is None or spec.label in wanted
            ]
        if not requests:
            raise click.ClickException("no strategy selected: check --strategies and --protocol")
        check_memory_sizes(model, [request.spec for request in requests])
        ids: dict[int, int | None] = {}

        def keep(request: Any, result: Any) -> None:
            result.config.update(backbone=provenance, quick=quick)
            ids[id(result)] = record_run(store, result)
            if not as_json:
                click.echo(summary_line(result, ids[id(result)]), err=True)

        workers = jobs or DEFAULT_JOBS[devices.kind]
        results = run_requests(requests, model, workers, torch.get_num_threads(), keep, progress)
        folder = (
            report_dir or Path("reports") / f"{name.replace(':', '_').replace('/', '_')}-{datetime.now():%Y%m%d-%H%M%S}"
        )
        kind = "quick" if quick else "full"
        report = write_report(results, folder, f"{name} ({kind} comparison, backbone {provenance['name']})")

    def show() -> None:
        for proto in protocols:
            click.echo(f"\n{name}, {proto}-incremental\n")
            click.echo(comparison_table([r for r in results if r.protocol == proto]))
        click.echo(f"report: {report}")

    runs = [{"id": ids[id(r)], **r.to_dict()} for r in results]
    emit(as_json, {"report": str(report), "runs": runs}, show)


@click.command("results")
@click.option("--out", type=click.Path(path_type=Path), default=Path("docs/results.md"), show_default=True)
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("reports/results"), show_default=True)
@click.option(
    "--seeds", default="0,1,2", show_default=True, help="Seeds of the Table 2 runs (the others use the first)."
)
@click.option("--quick", is_flag=True, help="CI size (1 epoch, few images): checks the pipeline, not the numbers.")
@click.option(
    "--render-only", is_flag=True, help="Rebuild the document from the runs kept in --report-dir; no training."
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Run everything again: forget the finished runs kept in --report-dir (a stopped run resumes without it).",
)
@backbone_options
@device_options
@click.option("--progress/--no-progress", default=None)
@THREADS_OPTION
@JOBS_OPTION
@click.pass_context
def results_command(
    ctx: click.Context,
    out: Path,
    report_dir: Path,
    seeds: str,
    quick: bool,
    render_only: bool,
    fresh: bool,
    backbone: BackboneChoice,
    devices: DeviceChoice,
    progress: bool | None,
    jobs: int | None,
) -> None:
    """Regenerate docs/results.md: Tables 2, 4 and 5 layouts and the continual-learning comparison.

    Trains and evaluates every strategy on split-digits and shifted-digits, both protocols (166 runs
    with the validation runs: 93 minutes on 2 idle cores, 2026-11-27), measures each regime's
    parameters and FLOPs at ViT-B/32 and B/16 (Table 5, about a minute), records the runs, writes
    per-scenario reports and the document, which names the backbone and where its weights came from. Table 2's and Table 4's regimes first choose
    their learning rates on a validation split of the training data (never the test data); the
    document reports the chosen rates. Each finished run is kept in --report-dir at once: run the
    same command again after stopping it and it goes on from there.
    """
    with clean_errors():
        from scenarios.results import generate_results, render_results

        if render_only:
            document = render_results(report_dir)
        else:
            seed_list = parse_ints(seeds, "--seeds") or [0]
            store, model, provenance = prepared(ctx, backbone, devices)
            options = " ".join(filter(None, [backbone.command_args(), devices.command_args()]))
            command = f"cmem scenario results --seeds {','.join(map(str, seed_list))} {options}"
            document = generate_results(
                model,
                provenance,
                seed_list,
                quick,
                report_dir,
                devices.device,
                limit_per_class=QUICK_LIMIT_PER_CLASS if quick else None,
                jobs=jobs or DEFAULT_JOBS[devices.kind],
                progress=progress,
                record=lambda r: record_run(store, r),
                command=command + (" --quick" if quick else ""),
                budget=run_budget(None, 0, quick, devices),
                amp=devices.amp,
                fresh=fresh,
                say=lambda text: click.echo(text, err=True),
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document)
    click.echo(f"wrote {out} (plots and JSON in {report_dir})")
