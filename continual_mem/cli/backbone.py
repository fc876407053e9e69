"""`cmem backbone list|add|pretrain`: the frozen ViTs tasks grow on."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from continual_mem.units import human_size

from .output import Table, emit, json_option
from .root import App, pass_app

if TYPE_CHECKING:
    from continual_mem.pretrain import PretrainConfig
    from store import BackboneInfo, TaskStore


def parse_model_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--arg img_size=32 --arg qk_norm=true` -> {"img_size": 32, "qk_norm": True} (JSON values)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise click.ClickException(f"--arg must look like name=value, got {pair!r}")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return kwargs


model_arg_option = click.option(
    "--arg",
    "model_args",
    multiple=True,
    metavar="NAME=VALUE",
    help="timm.create_model keyword argument (repeatable), e.g. --arg img_size=32.",
)


@click.group()
def backbone() -> None:
    """Frozen ViT backbones: add (hub or local weights), pretrain here, list."""


@backbone.command("list")
@json_option
@pass_app
def backbone_list(app: App, as_json: bool) -> None:
    """Registered backbones."""
    rows = app.open_store().list_backbones()
    table = Table(
        [
            (
                b.name,
                b.timm_name,
                b.config.get("img_size"),
                b.config.get("patch_size"),
                b.config.get("depth"),
                b.config.get("embed_dim"),
                b.weights_sha256[:12],
                human_size(b.weights_size),
                b.config.get("source"),
            )
            for b in rows
        ],
        ["name", "timm model", "img", "patch", "depth", "dim", "weights sha256", "size", "source"],
    )
    emit(as_json, rows, table)


@backbone.command("add")
@click.argument("name")
@click.option("--model", "model_name", required=True, help="timm model name, e.g. vit_base_patch16_224.")
@click.option(
    "--weights", type=click.Path(path_type=Path), help="Local .safetensors, .pth (weights_only) or .npz file."
)
@click.option("--random-init", is_flag=True, help="Random weights (for tests and timing only).")
@model_arg_option
@pass_app
def backbone_add(
    app: App, name: str, model_name: str, weights: Path | None, random_init: bool, model_args: tuple[str, ...]
) -> None:
    """Register backbone NAME: hub weights, or a local weight file when no network is there."""
    if weights is not None and random_init:
        raise click.ClickException("--weights and --random-init exclude each other")
    store = app.open_store()
    from continual_mem import services

    info = services.add_backbone(store, name, model_name, weights, parse_model_args(model_args), random_init)
    click.echo(f"Added backbone {info.name} ({info.timm_name}, weights sha256 {info.weights_sha256[:12]})")


@backbone.command("pretrain")
@click.argument("name")
@click.option("--model", "model_name", default=None, help="timm model name (default: the demo's vit_tiny layout).")
@model_arg_option
@click.option("--data", "data_source", default=None, help="Pretraining data (default builtin:glyphs, generated).")
@click.option("--epochs", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@pass_app
def backbone_pretrain(
    app: App,
    name: str,
    model_name: str | None,
    model_args: tuple[str, ...],
    data_source: str | None,
    epochs: int | None,
    lr: float | None,
    batch_size: int | None,
    seed: int,
) -> None:
    """Pretrain a small ViT here (no model hub reaches this machine) and register it as NAME.

    Its data must be disjoint from the downstream tasks: the default is generated glyphs.
    """
    store = app.open_store()
    config = pretrain_config(model_name, parse_model_args(model_args), data_source, epochs, lr, batch_size, seed)
    info = pretrain_backbone_with_progress(store, name, config)
    click.echo(f"Added backbone {info.name}: {info.timm_name} pretrained here on {config.data}")
    pretrain = info.config["pretrain"]
    if pretrain["pinned_kernels"]:
        click.echo(
            f"Kernels pinned ({pretrain['kernels']}): the bytes follow neither this environment nor the CPU"
            " (its instruction sets or its vendor)"
        )
    else:
        click.echo(f"Kernels not pinned ({pretrain['kernels']}): the bytes are reproducible on this CPU kind only")


def pretrain_config(
    model_name: str | None,
    model_kwargs: dict[str, Any],
    data_source: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> PretrainConfig:
    """The pretraining configuration of the given options (None: the demo's default)."""
    from continual_mem.pretrain import DEMO_KWARGS, DEMO_MODEL, PretrainConfig

    given = {"data": data_source, "epochs": epochs, "lr": lr, "batch_size": batch_size}
    kwargs = model_kwargs if (model_name or model_kwargs) else DEMO_KWARGS
    return PretrainConfig(
        model_name=model_name or DEMO_MODEL,
        model_kwargs=tuple(kwargs.items()),
        seed=seed,
        **{k: v for k, v in given.items() if v is not None},
    )


def pretrain_backbone_with_progress(store: TaskStore, name: str, config: PretrainConfig) -> BackboneInfo:
    """Pretrain and register backbone `name`, with a progress bar on stderr once it starts (refusals print only their line)."""
    from tqdm import tqdm

    from continual_mem import services

    bars: list[tqdm] = []

    def on_start() -> None:
        bars.append(tqdm(total=config.epochs, desc=f"pretrain {name}", unit="epoch", file=sys.stderr))

    def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
        bars[0].set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
        bars[0].update(1)

    try:
        return services.pretrain_and_add_backbone(store, name, config, on_epoch, on_start)
    finally:
        for bar in bars:
            bar.close()


COMMANDS = [backbone]
