"""`cmem task train A B C` (several tasks on the same images) and `cmem task sweep` (variants of one task).

Both train their reuse-mode adapters together, one backbone pass per step, under one progress
bar with each variant's loss and accuracy (none under --json).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .options import max_pixels_option
from .output import Table, emit, json_option, metric
from .root import App, pass_app

if TYPE_CHECKING:
    from continual_mem.services import RunReport
    from continual_mem.train import TrainConfig

CACHE_HELP = (
    "Memory budget in GiB of the backbone-feature cache (default: half of the free memory; 0 turns it off)."
    " In reuse mode, without data augmentation, the first epoch keeps each block's keys and values of the"
    " backbone tokens of every training image, and later epochs run only the task tokens (same result)."
    " Off, and said so, in full mode, for one epoch, under torchrun, or when the images do not fit."
)


def training_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options `task train` and `task sweep` share (how every variant trains)."""
    options = [
        click.option("--epochs", type=int, default=10, show_default=True),
        click.option("--steps", type=int, default=None, help="Train this many steps instead of --epochs."),
        click.option("--head-lr", type=float, default=3e-2, show_default=True, help="Rate of the task's head."),
        click.option("--batch-size", type=int, default=16, show_default=True),
        click.option("--val-split", type=float, default=0.1, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the batch order."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
        click.option("--amp", is_flag=True, help="Mixed precision (bf16 on CPU, fp16 on CUDA)."),
        click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of refusing the data."),
        click.option("--clip-grad", type=float, default=None, help="Clip each adapter's gradient norm to this."),
        click.option(
            "--patience",
            type=int,
            default=None,
            help="Stop an adapter after this many epochs without a better validation accuracy; keep its best epoch.",
        ),
        click.option("--cache-gb", default=None, metavar="GIB", help=CACHE_HELP),
        max_pixels_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_config(lr: float, seed: int, kw: dict[str, Any]) -> TrainConfig:
    """The base TrainConfig of the shared options (refuses bad values, ConfigError)."""
    from continual_mem.train import TrainConfig

    return TrainConfig(
        epochs=kw["epochs"],
        steps=kw["steps"],
        lr=lr,
        head_lr=kw["head_lr"],
        batch_size=kw["batch_size"],
        seed=seed,
        device=kw["device"],
        amp=kw["amp"],
        clip_grad_norm=kw["clip_grad"],
        patience=kw["patience"],
    )


def make_options(lr: float, kw: dict[str, Any]):  # type: ignore[no-untyped-def]
    from continual_mem import services
    from continual_mem.images import MAX_PIXELS

    cache_gb = services.check_cache_gb(kw["cache_gb"])
    config = make_config(lr, kw["seed"], kw)
    return services.Options(kw["val_split"], kw["skip_bad"], config, kw["max_pixels"] or MAX_PIXELS, cache_gb)


class ProgressBar:
    """One bar over every pass of a together-run, with each variant's running loss and accuracy."""

    def __init__(self, desc: str, quiet: bool) -> None:
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, p) -> None:  # type: ignore[no-untyped-def]
        if self.quiet:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=0, desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True)
        if p.step == 1:
            self.bar.total += p.total_steps
        shown = {name: f"{loss:.3f}/{acc:.2f}" for name, (loss, acc) in p.tasks.items()}
        self.bar.set_postfix(epoch=p.epoch, **shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plan_printer(quiet: bool) -> Callable[[Any], None]:
    def show(plan: Any) -> None:
        if not quiet:
            click.echo(plan.describe(), err=True)

    return show


def passes_text(report: RunReport) -> str:
    """Which variants shared a backbone pass, in words."""
    lines = []
    for group in report.passes:
        if group[0].mode == "reuse":
            lines.append(f"{len(group)} reuse-mode variant(s) trained together: one backbone pass per step")
        else:
            lines.append(f"{group[0].label}: full mode, trained in its own pass (its memory changes every token)")
    return "\n".join(lines)


def train_several(app: App, names: tuple[str, ...], sources: tuple[str, ...], memory: int, lr: float, kw: dict) -> None:
    """`cmem task train A B C`: one version of each task, trained together."""
    from continual_mem import services

    options = make_options(lr, kw)
    store = app.open_store()
    bar = ProgressBar(f"train {len(names)} tasks", kw["as_json"])
    try:
        report = services.train_together(
            store, names, sources, memory, options, on_step=bar, on_plan=plan_printer(kw["as_json"])
        )
    finally:
        bar.close()

    def show() -> None:
        for o in report.outcomes:
            click.echo(
                f"Trained {o.version.ref}: val accuracy {o.metrics.get('val_accuracy', float('nan')):.4f},"
                f" {o.metrics['epochs']:.0f} epoch(s) in {o.metrics['train_seconds']:.1f} s"
            )
        click.echo(passes_text(report))

    emit(kw["as_json"], [o.version for o in report.outcomes], show)


def _numbers(text: str, option: str, kind: type) -> list:  # type: ignore[type-arg]
    from continual_mem.errors import ConfigError

    parts = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise ConfigError(f"{option} gives no value: a sweep needs at least one variant")
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated {kind.__name__}s, got {text!r}") from None


@click.command("sweep")
@click.argument("name")
@click.option("--data", "data_source", required=True, help="Image folder, builtin:digits[?classes=..], ...")
@click.option("--memory", "memories", default="5", show_default=True, help="Memory sizes, comma-separated: 1,5,10,20.")
@click.option("--lr", "lrs", default="3e-3", show_default=True, help="Token learning rates, comma-separated.")
@click.option("--seeds", default=None, help="Initialisation seeds, comma-separated (default: --seed).")
@click.option("--mode", type=click.Choice(["reuse", "full"]), default="reuse", show_default=True)
@click.option("--deploy-best", is_flag=True, help="Point --alias at the best variant's version.")
@click.option("--alias", default="production", show_default=True, help="The alias --deploy-best moves.")
@training_options
@json_option
@pass_app
def task_sweep(
    app: App, name: str, data_source: str, memories: str, lrs: str, seeds: str | None, mode: str, **kw: Any
) -> None:
    """Train every (memory, lr, seed) variant of task NAME together, rank them, tag the best `best=true`.

    Every variant is a version with its hyperparameters and validation metrics. Variants see the
    same split and the same batches in the same order (--seed); --seeds vary their initialisation.
    Reuse-mode variants share one backbone pass per step; full-mode ones each run in their own.
    """
    from continual_mem import services

    seed_list = _numbers(seeds, "--seeds", int) if seeds is not None else [kw["seed"]]
    variants = services.sweep_variants(
        name, _numbers(memories, "--memory", int), _numbers(lrs, "--lr", float), seed_list, mode
    )
    options = make_options(variants[0].lr, kw)
    store = app.open_store()
    bar = ProgressBar(f"sweep {name} ({len(variants)} variants)", kw["as_json"])
    try:
        report = services.sweep(
            store,
            name,
            data_source,
            variants,
            options,
            on_step=bar,
            on_plan=plan_printer(kw["as_json"]),
            deploy_best=kw["alias"] if kw["deploy_best"] else None,
        )
    finally:
        bar.close()
    best = report.best
    rows = [
        (
            rank,
            o.version.ref,
            o.variant.memory,
            f"{o.variant.lr:g}",
            o.variant.seed,
            metric(o.metrics, "val_accuracy"),
            metric(o.metrics, "val_loss"),
            f"{o.metrics['epochs']:.0f}",
            "best" if best is not None and o is best else "",
        )
        for rank, o in enumerate(report.outcomes, 1)
    ]

    def show() -> None:
        Table(rows, ["rank", "version", "memory", "lr", "seed", "val acc", "val loss", "epochs", ""]).echo()
        click.echo(passes_text(report))
        if best is not None:
            click.echo(f"Tagged {best.version.ref} best=true")
            if kw["deploy_best"]:
                click.echo(f"{name}@{kw['alias']} -> version {best.version.number}")

    value = {"ranked": [o.version for o in report.outcomes], "best": best.version if best else None}
    emit(kw["as_json"], value, show)
