"""`cmem scenario ...`: run, compare and list continual-learning scenario runs; regenerate results.

The commands drive the `scenarios` package (Avalanche). The group expects, in the click context
object, a zero-argument `open_store()` returning a `store.TaskStore` (runs are then recorded
there); without one, runs are not recorded, and only the built-in backbones (`demo`, `random`)
or a one-off `--model --weights` can be used. Each command's options gather into a
`BackboneChoice` (which backbone), a `DeviceChoice` (device, bf16 autocast, batch sizes) and, for
`run` and `compare`, a `SplitChoice` (how the classes split into experiences). Importing this module imports neither torch, timm nor
Avalanche: every command imports what it needs; the strategies' names and help come from the
registry (`scenarios.strategies`), which imports none of them either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from scenarios.strategies import help_table, help_text

from .backbone import model_arg_option, parse_model_args
from .output import emit, json_option

PROTOCOL_CHOICES = ("task", "class")
ROUTE_CHOICES = ("lda", "nmc", "energy", "max-softmax")
#: Quick runs (CI): one epoch on at most this many training images per class.
QUICK_LIMIT_PER_CLASS = 12
#: `--jobs` by default: worker processes on CPU, and with --device cuda (one GPU).
DEFAULT_JOBS = {"cpu": 2, "cuda": 1}


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


@dataclass(frozen=True)
class BackboneChoice:
    """`--backbone NAME`, or a one-off `--model TIMM_NAME --weights FILE [--arg NAME=VALUE ...]`."""

    name: str | None
    model_name: str | None
    weights: Path | None
    model_args: tuple[str, ...]

    def check(self) -> None:
        """Refuse combinations that name no backbone or two, before anything loads."""
        if self.name is not None and (self.model_name or self.weights):
            raise click.ClickException("give --backbone NAME or --model with --weights, not both")
        if self.weights is not None and self.model_name is None:
            raise click.ClickException("--weights needs --model (the timm model name the file is for)")
        if self.model_name is not None and self.weights is None:
            raise click.ClickException(
                "--model needs --weights FILE (no model hub here); a registered backbone is --backbone NAME"
            )
        if self.model_args and self.model_name is None:
            raise click.ClickException("--arg needs --model: a registered backbone keeps its own arguments")

    @property
    def registered(self) -> bool:
        """A backbone of the store (which must then be there), not a built-in or one-off one."""
        from continual_mem.services import BUILTIN_BACKBONES

        return self.model_name is None and (self.name or "demo") not in BUILTIN_BACKBONES

    def load(self, store: Any | None) -> tuple[Any, Any]:
        """The backbone and its `services.Provenance`."""
        from continual_mem import services
        from continual_mem.pretrain import DEMO_DATA

        if self.model_name is not None and self.weights is not None:
            return services.one_off_backbone(self.model_name, self.weights, parse_model_args(self.model_args))
        name = self.name or "demo"
        if name == "demo":
            click.echo(f"loading the demo backbone (the package's weights, pretrained on {DEMO_DATA})", err=True)
        return services.resolve_backbone(store, name)

    def command_args(self) -> str:
        """The options that name this backbone, as a command line writes them."""
        if self.model_name is None:
            return f"--backbone {self.name or 'demo'}"
        return " ".join(
            [f"--model {self.model_name} --weights {self.weights}", *(f"--arg {a}" for a in self.model_args)]
        )


@dataclass(frozen=True)
class DeviceChoice:
    """`--device`, `--amp` and the budget's batch sizes."""

    device: str
    amp: bool
    batch_size: int | None
    eval_batch_size: int | None

    def check(self) -> None:
        """cpu or an available cuda[:N] (checked as every command checks a device); `--amp` (bf16
        autocast) on CUDA only."""
        import torch

        from continual_mem.train import check_device

        kind = check_device(self.device).type
        if kind not in DEFAULT_JOBS:
            raise click.ClickException(f"--device {self.device}: scenarios run on cpu or cuda[:N]")
        if self.amp and kind != "cuda":
            raise click.ClickException("--amp is bf16 autocast on CUDA only: add --device cuda (CPU runs in float32)")
        if self.amp and not torch.cuda.is_bf16_supported():
            raise click.ClickException(f"--amp: {torch.cuda.get_device_name(self.device)} has no bf16 support")

    @property
    def kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def command_args(self) -> str:
        parts = [] if self.device == "cpu" else [f"--device {self.device}"]
        parts += ["--amp"] if self.amp else []
        parts += [f"--batch-size {self.batch_size}"] if self.batch_size else []
        parts += [f"--eval-batch-size {self.eval_batch_size}"] if self.eval_batch_size else []
        return " ".join(parts)


@dataclass(frozen=True)
class SplitChoice:
    """What builds the scenario besides its name and protocol (the options of `_scenario_options`)."""

    class_order: str | None
    limit_per_class: int | None
    download: bool
    experiences: int | None
    first_classes: int | None

    def key(self, name: str, protocol: str, limit: int | None = None) -> Any:
        """The ScenarioKey of `name` in `protocol`, its name and class order checked before any backbone
        loads; `limit` when --limit-per-class is not given."""
        from scenarios.benchmarks import check_scenario_name
        from scenarios.runner import ScenarioKey

        check_scenario_name(name)
        order = _parse_ints(self.class_order, "--class-order")
        return ScenarioKey(
            name,
            protocol,
            tuple(order) if order else None,
            self.limit_per_class if self.limit_per_class is not None else limit,
            self.download,
            self.experiences,
            self.first_classes,
        )


def _check_memory_sizes(model: Any, specs: list[Any]) -> None:
    """Refuse memory strategies with more memory tokens than the backbone has tokens per image."""
    from continual_mem.model import check_memory_tokens

    for spec in specs:
        if spec.entry.takes_memory:
            check_memory_tokens(model, spec.memory)


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


def _budget(epochs: int | None, seed: int, quick: bool, devices: DeviceChoice) -> Any:
    """The budget of a run or comparison: the default (or quick) one, with what the options set."""
    from dataclasses import replace

    from scenarios.runner import QUICK_BUDGET, Budget

    given = {"epochs": epochs, "batch_size": devices.batch_size, "eval_batch_size": devices.eval_batch_size}
    return replace(QUICK_BUDGET if quick else Budget(), seed=seed, **{k: v for k, v in given.items() if v is not None})


def _at_least_one(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """One `Error:` line (exit 1) for a count below 1, as for every other bad value of these commands."""
    if value is not None and value < 1:
        raise click.ClickException(f"{param.opts[0]} must be at least 1, got {value}")
    return value


POSITIVE = click.IntRange(min=1)
JOBS_OPTION = click.option(
    "--jobs",
    "-j",
    type=POSITIVE,
    default=None,
    help="Runs in parallel, in worker processes (one per CPU core is about right; "
    f"default {DEFAULT_JOBS['cpu']}, {DEFAULT_JOBS['cuda']} with --device cuda).",
)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int) -> int:
    import torch

    torch.set_num_threads(value)
    return value


THREADS_OPTION = click.option(
    "--threads",
    type=POSITIVE,
    default=1,
    show_default=True,
    callback=_set_threads,
    expose_value=False,
    help="PyTorch CPU threads per process (these small models run fastest on one, above all on a busy machine).",
)


def _apply(options: list[Callable[..., Any]], func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        func = option(func)
    return func


def _backbone_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--backbone, or --model/--weights/--arg; gathered into one `backbone` argument (a BackboneChoice)."""

    def gather(**kwargs: Any) -> Any:
        choice = BackboneChoice(
            kwargs.pop("backbone"), kwargs.pop("model_name"), kwargs.pop("weights"), kwargs.pop("model_args")
        )
        return func(backbone=choice, **kwargs)

    options = [
        click.option(
            "--backbone",
            default=None,
            metavar="NAME",
            help="demo (default): the project's small ViT pretrained here; random: a tiny untrained ViT (smoke "
            "tests); or any backbone registered in the store (`cmem backbone list`), its weights checked "
            "against the recorded sha256. demo and random cannot be registered: they always mean these.",
        ),
        click.option(
            "--model",
            "model_name",
            default=None,
            help="A one-off run on this timm model with --weights FILE, without registering it.",
        ),
        click.option(
            "--weights",
            type=click.Path(path_type=Path),
            default=None,
            help="Local .safetensors, .pth or .npz file for --model (loaded as `cmem backbone add` loads it).",
        ),
        model_arg_option,
    ]
    return _apply(options, functools.wraps(func)(gather))


def _device_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--device, --amp, --batch-size, --eval-batch-size; gathered into one `devices` argument."""

    def gather(**kwargs: Any) -> Any:
        choice = DeviceChoice(
            kwargs.pop("device"), kwargs.pop("amp"), kwargs.pop("batch_size"), kwargs.pop("eval_batch_size")
        )
        return func(devices=choice, **kwargs)

    options = [
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]: everything runs there."),
        click.option("--amp", is_flag=True, help="bf16 autocast (with --device cuda only; float32 otherwise)."),
        click.option(
            "--batch-size", type=int, default=None, callback=_at_least_one, help="Training batch (default: 16)."
        ),
        click.option(
            "--eval-batch-size",
            type=int,
            default=None,
            callback=_at_least_one,
            help="Evaluation batch (default: 256).",
        ),
    ]
    return _apply(options, functools.wraps(func)(gather))


def _split_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What splits the scenario into experiences; gathered into one `split` argument (a SplitChoice)."""

    def gather(**kwargs: Any) -> Any:
        names = ("class_order", "limit_per_class", "download", "experiences", "first_classes")
        return func(split=SplitChoice(*(kwargs.pop(n) for n in names)), **kwargs)

    options = [
        click.option(
            "--experiences",
            type=int,
            default=None,
            callback=_at_least_one,
            help="Experiences to split the classes into (default: 5; 10 for torchvision sets). When they do not "
            "divide evenly, the first experience takes the remainder (10 classes in 3: 4, 3, 3).",
        ),
        click.option(
            "--first-classes",
            type=int,
            default=None,
            callback=_at_least_one,
            help='Classes in the first experience; the others split the rest evenly ("B50 Inc10": '
            "--experiences 6 --first-classes 50 on 100 classes).",
        ),
        click.option(
            "--class-order", default=None, help="Comma-separated class ids (default: the scenario's fixed order)."
        ),
        click.option(
            "--limit-per-class", type=POSITIVE, default=None, help="At most this many training images per class."
        ),
        click.option("--download", is_flag=True, help="torchvision scenarios: download the data set if missing."),
    ]
    return _apply(options, functools.wraps(func)(gather))


def _scenario_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        _backbone_options,
        _device_options,
        _split_options,
        click.option(
            "--route",
            type=click.Choice(ROUTE_CHOICES),
            default="lda",
            show_default=True,
            help="Class protocol: how the memory strategy infers the task.",
        ),
        click.option("--progress/--no-progress", default=None, help="Progress bars (default: on terminals)."),
        THREADS_OPTION,
    ]
    return _apply(options, func)


def _prepared(
    ctx: click.Context, backbone: BackboneChoice, devices: DeviceChoice
) -> tuple[Any | None, Any, dict[str, str]]:
    """Check the options, then open the store (required for a registered backbone) and load the
    backbone: (store or None, backbone, provenance as recorded)."""
    backbone.check()
    devices.check()
    store = _open_store(ctx, required=backbone.registered)
    model, provenance = backbone.load(store)
    return store, model, provenance.to_dict()


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
    with _clean_errors():
        from scenarios.backbone_cache import BackboneCache
        from scenarios.runner import StrategySpec, run_strategy

        spec = StrategySpec.parse(strategy_name, memory)
        key = split.key(name, protocol)
        store, model, provenance = _prepared(ctx, backbone, devices)
        _check_memory_sizes(model, [spec])
        scenario = key.build(model)
        budget = _budget(epochs, seed, False, devices)
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
        run_id = _record(store, result)
        if report_dir is not None:
            from scenarios.report import write_report

            write_report([result], report_dir, f"{name}: {spec.label}")

    def show() -> None:
        from scenarios.report import setup_lines

        click.echo(_summary_line(result, run_id))
        for line in setup_lines([result]):
            click.echo(f"  {line}")
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
    with _clean_errors():
        import torch

        from scenarios.report import comparison_table, write_report
        from scenarios.runner import RunRequest, StrategySpec, compare_specs, run_requests

        protocols = PROTOCOL_CHOICES if protocol == "both" else (protocol,)
        sizes = _parse_ints(memory_sizes, "--memory-sizes") or []
        wanted = {StrategySpec.parse(s).label for s in strategies.split(",")} if strategies else None
        budget = _budget(epochs, seed, quick, devices)
        keys = [split.key(name, proto, QUICK_LIMIT_PER_CLASS if quick else None) for proto in protocols]
        store, model, provenance = _prepared(ctx, backbone, devices)
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
        _check_memory_sizes(model, [request.spec for request in requests])
        ids: dict[int, int | None] = {}

        def keep(request: Any, result: Any) -> None:
            result.config.update(backbone=provenance, quick=quick)
            ids[id(result)] = _record(store, result)
            if not as_json:
                click.echo(_summary_line(result, ids[id(result)]), err=True)

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
@_backbone_options
@_device_options
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
    backbone: BackboneChoice,
    devices: DeviceChoice,
    progress: bool | None,
    jobs: int | None,
) -> None:
    """Regenerate docs/results.md: Tables 2, 4 and 5 layouts and the continual-learning comparison.

    Trains and evaluates every strategy on split-digits and shifted-digits, both protocols (split-digits
    took 43 minutes on 2 idle cores before issue 10; shifted-digits has 3,600 training images, about
    3.4 times as many, not timed whole), measures each regime's parameters and FLOPs at ViT-B/32 and B/16
    (Table 5, about a minute), records the runs, writes per-scenario reports and the document, which
    names the backbone and where its weights came from. Table 2's regimes first choose their
    learning rates on a validation split of the training data (never the test data); the document
    reports the chosen rates.
    """
    with _clean_errors():
        from scenarios.results import generate_results, render_results

        if render_only:
            document = render_results(report_dir)
        else:
            seed_list = _parse_ints(seeds, "--seeds") or [0]
            store, model, provenance = _prepared(ctx, backbone, devices)
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
                record=lambda r: _record(store, r),
                command=command + (" --quick" if quick else ""),
                budget=_budget(None, 0, quick, devices),
                amp=devices.amp,
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document)
    click.echo(f"wrote {out} (plots and JSON in {report_dir})")


COMMANDS = [scenario_group]
