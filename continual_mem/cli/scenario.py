"""`cmem scenario ...`: run, compare and list continual-learning scenario runs; regenerate results.

The commands drive the `scenarios` package (Avalanche). The group expects, in the click context
object, a zero-argument `open_store()` returning a `store.TaskStore` (runs are then recorded
there); without one, runs are not recorded. Importing this module imports neither torch, timm nor
Avalanche: every command imports what it needs; the strategies' names and help come from the
registry (`scenarios.strategies`), which imports none of them either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from scenarios.strategies import help_table, help_text

from .output import emit, json_option

PROTOCOL_CHOICES = ("task", "class")
BACKBONES = ("demo", "random")
ROUTE_CHOICES = ("lda", "nmc", "energy", "max-softmax")
#: Quick runs (CI): one epoch on at most this many training images per class.
QUICK_LIMIT_PER_CLASS = 12
#: `--backbone random`: a tiny untrained ViT, so smoke tests and CI stay fast.
RANDOM_BACKBONE = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}


@contextmanager
def _clean_errors() -> Iterator[None]:
    """The project's own errors reach the user as one-line click errors, not tracebacks."""
    from continual_mem.errors import ContinualMemError

    try:
        yield
    except ContinualMemError as exc:
        raise click.ClickException(str(exc)) from None


def _store_errors() -> tuple[type[BaseException], ...]:
    try:
        from store.errors import StoreError
    except ImportError:
        return ()
    return (StoreError,)


def _open_store(ctx: click.Context, required: bool = False) -> Any | None:
    """The task store from the context object, or None (runs are then not recorded).

    Only `runs` requires one; the other commands say on stderr that they will not record.
    """
    opener = getattr(ctx.obj, "open_store", None)
    try:
        if opener is None:
            raise click.ClickException("no task store is configured (run this through `cmem scenario`)")
        return opener()
    except click.ClickException as exc:
        if required:
            raise
        click.echo(f"note: {exc.format_message()}; runs are not recorded", err=True)
    except _store_errors() as exc:
        if required:
            raise click.ClickException(f"cannot open the task store: {exc}") from None
        click.echo(f"note: cannot open the task store ({exc}); runs are not recorded", err=True)
    return None


def _record(store: Any | None, result: Any) -> int | None:
    """Keep a run in the store's scenario runs; returns its id (None without a store)."""
    if store is None:
        return None
    try:
        info = store.record_scenario_run(
            result.scenario,
            result.strategy,
            result.protocol,
            result.config,
            result.metrics,
            result.accuracy_matrix,
            wall_time_s=result.wall_time_s,
        )
    except _store_errors() as exc:
        raise click.ClickException(f"cannot record the run in the task store: {exc}") from None
    return int(info.id)


def _load_backbone(kind: str) -> Any:
    """`demo`: the project's pretrained small ViT (pretrained once, then cached); `random`: a tiny
    untrained ViT of the same family (seeded), for smoke tests only."""
    from continual_mem import pretrain
    from continual_mem.backbone import create_backbone

    if kind == "demo":
        click.echo(f"loading the demo backbone (pretrained on {pretrain.DEMO_DATA} once, then cached)", err=True)
        return pretrain.demo_backbone()
    import torch

    torch.manual_seed(0)
    return create_backbone(pretrain.DEMO_MODEL, num_classes=8, **RANDOM_BACKBONE).eval()


def _check_memory_sizes(model: Any, specs: list[Any]) -> None:
    """Refuse memory strategies with more memory tokens than the backbone has tokens per image."""
    from continual_mem.model import check_memory_tokens

    for spec in specs:
        if spec.name == "memory":
            check_memory_tokens(model, spec.memory)


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


def _budget(epochs: int | None, seed: int, quick: bool) -> Any:
    from dataclasses import replace

    from scenarios.runner import QUICK_BUDGET, Budget

    budget = replace(QUICK_BUDGET if quick else Budget(), seed=seed)
    return replace(budget, epochs=epochs) if epochs is not None else budget


POSITIVE = click.IntRange(min=1)
JOBS_OPTION = click.option(
    "--jobs",
    "-j",
    type=POSITIVE,
    default=2,
    show_default=True,
    help="Runs in parallel, in worker processes (one per CPU core is about right).",
)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int) -> int:
    import torch

    torch.set_num_threads(value)
    return value


def _scenario_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--backbone",
            type=click.Choice(BACKBONES),
            default="demo",
            show_default=True,
            help="demo: the project's pretrained small ViT; random: a tiny untrained ViT (smoke tests).",
        ),
        click.option(
            "--class-order", default=None, help="Comma-separated class ids (default: the scenario's fixed order)."
        ),
        click.option(
            "--limit-per-class", type=POSITIVE, default=None, help="At most this many training images per class."
        ),
        click.option(
            "--route",
            type=click.Choice(ROUTE_CHOICES),
            default="lda",
            show_default=True,
            help="Class protocol: how the memory strategy infers the task.",
        ),
        click.option("--device", default="cpu", show_default=True),
        click.option("--download", is_flag=True, help="torchvision scenarios: download the data set if missing."),
        click.option("--progress/--no-progress", default=None, help="Progress bars (default: on terminals)."),
        click.option(
            "--threads",
            type=POSITIVE,
            default=1,
            show_default=True,
            callback=_set_threads,
            expose_value=False,
            help="PyTorch CPU threads per process (these small models run fastest on one, above all on a busy machine).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _scenario_key(name: str, protocol: str, class_order: str | None, limit: int | None, download: bool) -> Any:
    """What builds the scenario, its name and options checked (before any backbone is loaded)."""
    from scenarios.benchmarks import check_scenario_name
    from scenarios.runner import ScenarioKey

    check_scenario_name(name)
    order = _parse_ints(class_order, "--class-order")
    return ScenarioKey(name, protocol, tuple(order) if order else None, limit, download)


def _summary_line(result: Any, run_id: int | None) -> str:
    from scenarios.report import pct

    m = result.metrics
    task_id = f", task-id {pct(m['task_id_accuracy'])}%" if m.get("task_id_accuracy") is not None else ""
    stored = f" (run #{run_id})" if run_id is not None else ""
    return (
        f"{result.scenario} {result.protocol}-incremental {result.strategy}: average accuracy "
        f"{pct(m['average_accuracy'])}%, forgetting {pct(m['forgetting'])}%, BWT {pct(m['bwt'])}%{task_id}, "
        f"{result.wall_time_s:.0f} s{stored}"
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
@_scenario_options
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
    backbone: str,
    class_order: str | None,
    limit_per_class: int | None,
    route: str,
    device: str,
    download: bool,
    progress: bool | None,
) -> None:
    """Train one strategy through scenario NAME and evaluate it after every experience.

    NAME: split-digits, synthetic, folder:PATH (one sub-folder per class) or
    torchvision:SET[:ROOT] (MNIST, FashionMNIST, CIFAR10, CIFAR100 already on disk).
    """
    with _clean_errors():
        from continual_mem.train import check_device
        from scenarios.runner import StrategySpec, run_strategy

        spec = StrategySpec.parse(strategy_name, memory)
        key = _scenario_key(name, protocol, class_order, limit_per_class, download)
        check_device(device)
        store = _open_store(ctx)
        model = _load_backbone(backbone)
        _check_memory_sizes(model, [spec])
        scenario = key.build(model)
        result = run_strategy(scenario, spec, model, _budget(epochs, seed, False), device, route, progress)
        result.config["backbone"] = backbone
        run_id = _record(store, result)
        if report_dir is not None:
            from scenarios.report import write_report

            write_report([result], report_dir, f"{name}: {spec.label}")

    def show() -> None:
        click.echo(_summary_line(result, run_id))
        for i, row in enumerate(result.accuracy_matrix):
            click.echo(f"  after experience {i}: " + " ".join(f"{100 * a:5.1f}" for a in row))

    emit(as_json, {"id": run_id, **result.to_dict()}, show)


@scenario_group.command("compare", epilog=help_table())
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
@_scenario_options
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
    jobs: int,
    backbone: str,
    class_order: str | None,
    limit_per_class: int | None,
    route: str,
    device: str,
    download: bool,
    progress: bool | None,
) -> None:
    """Every strategy on scenario NAME, same backbone, data, budget and seed; one table.

    NAME as for `run`. Runs are recorded in the task store and written to a report folder
    (markdown table, accuracy-matrix heatmaps, accuracy over experiences).
    """
    with _clean_errors():
        import torch

        from continual_mem.train import check_device
        from scenarios.report import comparison_table, write_report
        from scenarios.runner import RunRequest, StrategySpec, compare_specs, run_requests

        protocols = PROTOCOL_CHOICES if protocol == "both" else (protocol,)
        sizes = _parse_ints(memory_sizes, "--memory-sizes") or []
        wanted = {StrategySpec.parse(s).label for s in strategies.split(",")} if strategies else None
        budget = _budget(epochs, seed, quick)
        limit = limit_per_class if limit_per_class is not None else (QUICK_LIMIT_PER_CLASS if quick else None)
        keys = [_scenario_key(name, proto, class_order, limit, download) for proto in protocols]
        check_device(device)
        store = _open_store(ctx)
        model = _load_backbone(backbone)
        requests = []
        for key in keys:
            key.build(model)  # fail here, in one line, rather than in a worker
            requests += [
                RunRequest(key, spec, budget, device, route)
                for spec in compare_specs(key.protocol, sizes)
                if wanted is None or spec.label in wanted
            ]
        if not requests:
            raise click.ClickException("no strategy selected: check --strategies and --protocol")
        _check_memory_sizes(model, [request.spec for request in requests])
        ids: dict[int, int | None] = {}

        def keep(request: Any, result: Any) -> None:
            result.config.update(backbone=backbone, quick=quick)
            ids[id(result)] = _record(store, result)
            if not as_json:
                click.echo(_summary_line(result, ids[id(result)]), err=True)

        results = run_requests(requests, model, jobs, torch.get_num_threads(), keep, progress)
        folder = (
            report_dir or Path("reports") / f"{name.replace(':', '_').replace('/', '_')}-{datetime.now():%Y%m%d-%H%M%S}"
        )
        report = write_report(
            results, folder, f"{name} ({'quick' if quick else 'full'} comparison, backbone {backbone})"
        )

    def show() -> None:
        for proto in protocols:
            click.echo(f"\n{name}, {proto}-incremental\n")
            click.echo(comparison_table([r for r in results if r.protocol == proto]))
        click.echo(f"report: {report}")

    runs = [{"id": ids[id(r)], **r.to_dict()} for r in results]
    emit(as_json, {"report": str(report), "runs": runs}, show)


@scenario_group.command("runs")
@click.option("--scenario", default=None, help="Only runs of this scenario.")
@click.option("--strategy", default=None, help="Only runs of this strategy.")
@json_option
@click.pass_context
def runs_command(ctx: click.Context, scenario: str | None, strategy: str | None, as_json: bool) -> None:
    """The scenario runs kept in the task store, oldest first."""
    store = _open_store(ctx, required=True)
    try:
        runs = store.list_scenario_runs(scenario=scenario, strategy=strategy)
    except _store_errors() as exc:
        raise click.ClickException(f"cannot read the task store: {exc}") from None

    def show() -> None:
        if not runs:
            click.echo("no scenario runs")
            return
        click.echo(
            f"{'id':>4}  {'scenario':<14} {'protocol':<8} {'strategy':<12} {'avg acc':>8} {'forget':>7} {'wall':>7}  created"
        )
        for r in runs:
            m = r.metrics
            click.echo(
                f"{r.id:>4}  {r.scenario:<14} {r.protocol:<8} {r.strategy:<12} {100 * m.get('average_accuracy', 0):7.1f}% "
                f"{100 * m.get('forgetting', 0):6.1f}% {r.wall_time_s or 0:6.0f}s  {r.created_at:%Y-%m-%d %H:%M}"
            )

    emit(as_json, runs, show)


@scenario_group.command("results")
@click.option("--out", type=click.Path(path_type=Path), default=Path("docs/results.md"), show_default=True)
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("reports/results"), show_default=True)
@click.option(
    "--seeds", default="0,1,2", show_default=True, help="Seeds of the Table 2 runs (the others use the first)."
)
@click.option("--quick", is_flag=True, help="CI size (1 epoch, few images): checks the pipeline, not the numbers.")
@click.option(
    "--render-only", is_flag=True, help="Rebuild the document from the runs kept in --report-dir; no training."
)
@click.option("--backbone", type=click.Choice(BACKBONES), default="demo", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=None)
@click.option(
    "--threads",
    type=POSITIVE,
    default=1,
    show_default=True,
    callback=_set_threads,
    expose_value=False,
    help="PyTorch CPU threads per process.",
)
@JOBS_OPTION
@click.pass_context
def results_command(
    ctx: click.Context,
    out: Path,
    report_dir: Path,
    seeds: str,
    quick: bool,
    render_only: bool,
    backbone: str,
    device: str,
    progress: bool | None,
    jobs: int,
) -> None:
    """Regenerate docs/results.md: Table 2 layout and the continual-learning comparison.

    Trains and evaluates every strategy on split-digits and synthetic, both protocols (43 minutes
    on 2 cores, measured), records the runs, writes per-scenario reports and the document.
    """
    with _clean_errors():
        from scenarios.results import generate_results, render_results

        if render_only:
            document = render_results(report_dir)
        else:
            from continual_mem.train import check_device

            seed_list = _parse_ints(seeds, "--seeds") or [0]
            check_device(device)
            store = _open_store(ctx)
            model = _load_backbone(backbone)
            command = f"cmem scenario results --seeds {','.join(map(str, seed_list))} --backbone {backbone}"
            document = generate_results(
                model,
                backbone,
                seed_list,
                quick,
                report_dir,
                device,
                limit_per_class=QUICK_LIMIT_PER_CLASS if quick else None,
                jobs=jobs,
                progress=progress,
                record=lambda r: _record(store, r),
                command=command + (" --quick" if quick else ""),
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document)
    click.echo(f"wrote {out} (plots and JSON in {report_dir})")


COMMANDS = [scenario_group]
