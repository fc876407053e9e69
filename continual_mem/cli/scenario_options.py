"""The options the `cmem scenario` commands share, and what they gather into.

Each command's options gather into a `BackboneChoice` (which backbone), a `DeviceChoice` (device,
bf16 autocast, batch sizes) and, for `run` and `compare`, a `SplitChoice` (how the classes split into
experiences). Importing this module imports neither torch, timm nor Avalanche.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .backbone import model_arg_option, parse_model_args

PROTOCOL_CHOICES = ("task", "class")
ROUTE_CHOICES = ("lda", "nmc", "energy", "max-softmax")
#: Quick runs (CI): one epoch on at most this many training images per class.
QUICK_LIMIT_PER_CLASS = 12
#: `--jobs` by default: worker processes on CPU, and with --device cuda (one GPU).
DEFAULT_JOBS = {"cpu": 2, "cuda": 1}


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
    """What builds the scenario besides its name and protocol (the options of `scenario_options`)."""

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
        order = parse_ints(self.class_order, "--class-order")
        return ScenarioKey(
            name,
            protocol,
            tuple(order) if order else None,
            self.limit_per_class if self.limit_per_class is not None else limit,
            self.download,
            self.experiences,
            self.first_classes,
        )


def parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


def run_budget(epochs: int | None, seed: int, quick: bool, devices: DeviceChoice) -> Any:
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


def backbone_options(func: Callable[..., Any]) -> Callable[..., Any]:
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


def device_options(func: Callable[..., Any]) -> Callable[..., Any]:
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


def scenario_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        backbone_options,
        device_options,
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
