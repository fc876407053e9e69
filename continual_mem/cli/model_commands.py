"""Commands that run the model: torch and timm are imported inside each command, not here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import App, pass_app
from .output import echo_json, echo_json_line, echo_table
from .store_commands import backbone, json_option, task


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


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA device is available here")


# ------------------------------------------------------------------------------------- backbones
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
    config = _pretrain_config(model_name, parse_model_args(model_args), data_source, epochs, lr, batch_size, seed)
    info = pretrain_backbone_with_progress(store, name, config)
    click.echo(f"Added backbone {info.name}: {info.timm_name} pretrained here on {config.data}")


def _pretrain_config(model_name, model_kwargs, data_source, epochs, lr, batch_size, seed):  # type: ignore[no-untyped-def]
    from continual_mem.pretrain import DEMO_KWARGS, DEMO_MODEL, PretrainConfig

    given = {"data": data_source, "epochs": epochs, "lr": lr, "batch_size": batch_size}
    kwargs = model_kwargs if (model_name or model_kwargs) else DEMO_KWARGS
    return PretrainConfig(
        model_name=model_name or DEMO_MODEL,
        model_kwargs=tuple(kwargs.items()),
        seed=seed,
        **{k: v for k, v in given.items() if v is not None},
    )


def pretrain_backbone_with_progress(store, name, config):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    from continual_mem import services

    with tqdm(total=config.epochs, desc=f"pretrain {name}", unit="epoch", file=sys.stderr) as bar:

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
            bar.update(1)

        return services.pretrain_and_add_backbone(store, name, config, on_epoch)


# ------------------------------------------------------------------------------------- training
@task.command("train")
@click.argument("name")
@click.option(
    "--data", "data_source", required=True, help="Image folder, builtin:digits[?classes=..], builtin:synthetic."
)
@click.option("--memory", type=int, default=5, show_default=True, help="Memory tokens per layer.")
@click.option("--mode", type=click.Choice(["reuse", "full"]), default="reuse", show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--steps", type=int, default=None, help="Train this many steps instead of --epochs.")
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Rate of the memory and class token.")
@click.option("--head-lr", type=float, default=3e-2, show_default=True, help="Rate of the task's head.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--val-split", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--amp", is_flag=True, help="Mixed precision (bf16 on CPU, fp16 on CUDA).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of refusing the data.")
@json_option
@pass_app
def task_train(
    app: App,
    name: str,
    data_source: str,
    memory: int,
    mode: str,
    epochs: int,
    steps: int | None,
    lr: float,
    head_lr: float,
    batch_size: int,
    val_split: float,
    seed: int,
    device: str,
    amp: bool,
    skip_bad: bool,
    as_json: bool,
) -> None:
    """Train a new version of task NAME (runs unchanged under torchrun)."""
    from continual_mem import services
    from continual_mem.errors import ContinualMemError
    from continual_mem.train import TrainConfig, init_distributed

    _check_device(device)
    try:
        config = TrainConfig(
            epochs=epochs, steps=steps, lr=lr, head_lr=head_lr, batch_size=batch_size, seed=seed, device=device, amp=amp
        )
    except ValueError as exc:
        raise ContinualMemError(str(exc)) from None
    request = services.TrainRequest(name, data_source, memory, mode, val_split, skip_bad, config)
    store = app.open_store()
    ctx = init_distributed(device)
    try:
        version, metrics = _train_with_progress(store, request, ctx)
    finally:
        _leave_distributed()
    if not ctx.is_main:
        return
    if as_json:
        echo_json(version)
        return
    click.echo(
        f"Trained {version.ref}: val accuracy {metrics.get('val_accuracy', float('nan')):.4f}, "
        f"{metrics['epochs']:.0f} epoch(s) in {metrics['train_seconds']:.1f} s "
        f"({metrics['seconds_per_epoch']:.2f} s/epoch)"
    )


def _train_with_progress(store, request, ctx):  # type: ignore[no-untyped-def]
    """Train with a progress bar (rank 0), shown from the first step: refusals print nothing else."""
    from tqdm import tqdm

    from continual_mem import services

    bars: list[tqdm] = []

    def on_step(p) -> None:  # type: ignore[no-untyped-def]
        if not ctx.is_main:
            return
        if not bars:
            bars.append(
                tqdm(
                    total=p.total_steps, desc=f"train {request.task}", unit="step", file=sys.stderr, dynamic_ncols=True
                )
            )
        bars[0].set_postfix(epoch=p.epoch, loss=f"{p.loss:.3f}", acc=f"{p.accuracy:.3f}", refresh=False)
        bars[0].update(1)

    try:
        return services.train_version(store, request, on_step=on_step, ctx=ctx)
    finally:
        for bar in bars:
            bar.close()


def _leave_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------- serving
@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", "tasks", multiple=True, help="NAME, NAME@VERSION or NAME@ALIAS (repeatable).")
@click.option("--alias", default=None, help="Every task deployed under this alias (default: production).")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@json_option
@pass_app
def predict(
    app: App,
    paths: tuple[Path, ...],
    tasks: tuple[str, ...],
    alias: str | None,
    top_k: int,
    batch_size: int,
    as_json: bool,
) -> None:
    """Answer every requested task for images PATHS (files or folders) in ONE backbone pass per batch.

    Reuse-mode tasks share that pass; tasks trained in full mode need one pass each (said in the output).
    """
    if tasks and alias:
        raise click.ClickException("give --task or --alias, not both")
    if top_k < 1:
        raise click.ClickException(f"--top-k must be at least 1, got {top_k}")
    store = app.open_store()
    from continual_mem import services

    refs = list(tasks) if tasks else services.deployed_refs(store, alias or "production")
    loaded = services.load_versions(store, refs)
    files, images = services.load_image_files(paths)
    answers, passes = services.predict(loaded, images, top_k=top_k, batch_size=batch_size)
    full = [t for t, v in loaded.versions.items() if v.mode == "full"]
    if as_json:
        for path, answer in zip(files, answers):
            echo_json_line(
                {
                    "path": str(path),
                    "backbone_passes": passes,
                    "predictions": {
                        t: {
                            "version": loaded.versions[t].number,
                            "top": [{"label": p.label, "probability": round(p.probability, 6)} for p in preds],
                        }
                        for t, preds in answer.items()
                    },
                }
            )
        return
    note = f" ({', '.join(full)} trained in full mode: one pass each)" if full else ""
    click.echo(f"{len(loaded.versions)} task(s), {passes} backbone pass(es) per batch{note}")
    rows = []
    for path, answer in zip(files, answers):
        for t, preds in answer.items():
            rows.append(
                (
                    str(path),
                    f"{t}@{loaded.versions[t].number}",
                    "  ".join(f"{p.label} {p.probability:.2f}" for p in preds),
                )
            )
    echo_table(rows, ["image", "task", f"top-{top_k}"])


@click.command("eval")
@click.argument("ref")
@click.option("--data", "data_source", required=True, help="Labelled data with the task's classes.")
@click.option("--skip-bad", is_flag=True)
@json_option
@pass_app
def eval_cmd(app: App, ref: str, data_source: str, skip_bad: bool, as_json: bool) -> None:
    """Accuracy, per-class accuracy and confusion matrix of REF (NAME, NAME@V, NAME@ALIAS); kept in the store."""
    store = app.open_store()
    from continual_mem import services

    result = services.evaluate_version(store, ref, data_source, skip_bad)
    if as_json:
        echo_json(result)
        return
    click.echo(
        f"{result['version']} on {data_source}: accuracy {result['accuracy']:.4f} over {result['samples']} images"
    )
    names = result["class_names"]
    echo_table(
        [(n, result["per_class_accuracy"][n], *row) for n, row in zip(names, result["confusion_matrix"])],
        ["class", "accuracy", *[f"->{n}" for n in names]],
    )


COMMANDS = [predict, eval_cmd]
