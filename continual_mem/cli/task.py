"""`cmem task ...`: register tasks, train them into versions, list, show, tag and delete versions."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from continual_mem.units import human_size

from .options import at_least_one, max_pixels_option
from .output import Table, emit, fmt, json_option, metric
from .root import App, pass_app

if TYPE_CHECKING:
    from continual_mem.services import TrainRequest
    from continual_mem.train import DistContext
    from store import TaskStore, VersionInfo


@click.group()
def task() -> None:
    """Tasks: register, train, list, show, versions."""


@task.command("register")
@click.argument("name")
@click.option("--backbone", "backbone_name", required=True, help="Registered backbone the task grows on.")
@click.option("--classes", help="Comma-separated class names, e.g. cat,dog.")
@click.option("--data", "data_source", help="Take the class names from a data source (folder or builtin:...).")
@click.option("--description", default="", help="Free text.")
@json_option
@pass_app
def task_register(
    app: App,
    name: str,
    backbone_name: str,
    classes: str | None,
    data_source: str | None,
    description: str,
    as_json: bool,
) -> None:
    """Register a task NAME (lowercase letters, digits, '-', '_', '.')."""
    if (classes is None) == (data_source is None):
        raise click.UsageError("give exactly one of --classes or --data")
    store = app.open_store()
    if classes is not None:
        class_names = [c.strip() for c in classes.split(",")]
    else:
        from continual_mem.data import source_class_names

        class_names = source_class_names(data_source)  # type: ignore[arg-type]
    info = store.register_task(name, backbone_name, class_names, description)
    classes_text = ", ".join(info.class_names)
    emit(
        as_json,
        info,
        f"Registered task {info.name} on {info.backbone}: {len(info.class_names)} classes ({classes_text})",
    )


@task.command("list")
@click.option("--backbone", "backbone_name", help="Only tasks on this backbone.")
@click.option("--tag", help="Only tasks with this tag (key or key=value).")
@click.option("--all", "include_archived", is_flag=True, help="Include archived tasks.")
@json_option
@pass_app
def task_list(app: App, backbone_name: str | None, tag: str | None, include_archived: bool, as_json: bool) -> None:
    """Registered tasks with their aliases."""
    rows = app.open_store().list_tasks(backbone=backbone_name, tag=tag, include_archived=include_archived)
    table = Table(
        [(t.name, t.backbone, len(t.class_names), fmt(t.aliases), fmt(t.tags), t.created_at) for t in rows],
        ["task", "backbone", "classes", "aliases", "tags", "created"],
    )
    emit(as_json, rows, table)


@task.command("show")
@click.argument("name")
@json_option
@pass_app
def task_show(app: App, name: str, as_json: bool) -> None:
    """One task: classes, aliases, tags and its versions."""
    store = app.open_store()
    info = store.get_task(name)
    store.fail_stale()  # a version whose training process died is shown failed, with the reason
    versions = store.list_versions(name, include_deleted=True)

    def show() -> None:
        click.echo(f"task:        {info.name}{'  (archived)' if info.archived else ''}")
        click.echo(f"backbone:    {info.backbone}")
        click.echo(f"classes:     {', '.join(info.class_names)}")
        click.echo(f"description: {info.description or '-'}")
        click.echo(f"aliases:     {fmt(info.aliases) or '-'}")
        click.echo(f"tags:        {fmt(info.tags) or '-'}")
        click.echo("")
        versions_table(versions).echo()

    emit(as_json, {"task": info, "versions": versions}, show)


def versions_table(versions: Sequence[VersionInfo]) -> Table:
    return Table(
        [
            (
                v.number,
                v.status + (" (deleted)" if v.deleted else ""),
                v.mode,
                v.memory_size,
                metric(v.metrics, "val_accuracy"),
                metric(v.metrics, "train_seconds"),
                ",".join(v.aliases) or "-",
                human_size(v.artifact_size),
                v.created_at,
            )
            for v in versions
        ],
        ["version", "status", "mode", "memory", "val acc", "train s", "aliases", "size", "created"],
        empty="(no versions yet: cmem task train ...)",
    )


@task.command("versions")
@click.argument("name")
@click.option("--status", type=click.Choice(["training", "ready", "failed"]), help="Only versions in this state.")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted versions.")
@json_option
@pass_app
def task_versions(app: App, name: str, status: str | None, include_deleted: bool, as_json: bool) -> None:
    """A task's versions, oldest first (a version whose training process died is marked failed)."""
    store = app.open_store()
    store.fail_stale()
    versions = store.list_versions(name, status=status, include_deleted=include_deleted)
    emit(as_json, versions, versions_table(versions))


@task.command("delete")
@click.argument("ref")
@pass_app
def task_delete(app: App, ref: str) -> None:
    """Delete version REF (NAME@V, the number given explicitly); its number is never reused."""
    from store.names import parse_ref

    store = app.open_store()
    parsed = parse_ref(ref)
    if parsed.number is None:
        versions = store.list_versions(parsed.task)
        example = f"{parsed.task}@{versions[-1].number if versions else 1}"
        raise click.ClickException(
            f"give the version to delete, e.g. {example}: `task delete` removes one version, named by its number"
        )
    info = store.delete_version(ref)
    click.echo(f"Deleted {info.ref}")


@task.command("tag")
@click.argument("name")
@click.argument("tag")
@click.option("--version", type=int, help="Tag this version instead of the task.")
@pass_app
def task_tag(app: App, name: str, tag: str, version: int | None) -> None:
    """Set TAG (key=value) on a task or one of its versions."""
    key, sep, value = tag.partition("=")
    if not sep or not key:
        raise click.UsageError(f"tag must look like key=value, got {tag!r}")
    app.open_store().set_tag(name, key, value, version=version)
    click.echo(f"Tagged {name}{'@' + str(version) if version else ''} {key}={value}")


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
@max_pixels_option
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
    max_pixels: int | None,
    as_json: bool,
) -> None:
    """Train a new version of task NAME (runs unchanged under torchrun)."""
    at_least_one(max_pixels=max_pixels)
    from continual_mem import services
    from continual_mem.images import MAX_PIXELS
    from continual_mem.train import TrainConfig, init_distributed

    config = TrainConfig(  # refuses bad values and a device that is not here (ConfigError)
        epochs=epochs, steps=steps, lr=lr, head_lr=head_lr, batch_size=batch_size, seed=seed, device=device, amp=amp
    )
    request = services.TrainRequest(
        name, data_source, memory, mode, val_split, skip_bad, config, max_pixels or MAX_PIXELS
    )
    store = app.open_store()
    ctx = init_distributed(device)
    try:
        version, metrics = train_with_progress(store, request, ctx)
    finally:
        _leave_distributed()
    if not ctx.is_main:
        return
    assert version is not None  # rank 0 writes the version
    emit(
        as_json,
        version,
        f"Trained {version.ref}: val accuracy {metrics.get('val_accuracy', float('nan')):.4f}, "
        f"{metrics['epochs']:.0f} epoch(s) in {metrics['train_seconds']:.1f} s "
        f"({metrics['seconds_per_epoch']:.2f} s/epoch)",
    )


def train_with_progress(
    store: TaskStore, request: TrainRequest, ctx: DistContext
) -> tuple[VersionInfo | None, dict[str, float]]:
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


COMMANDS = [task]
