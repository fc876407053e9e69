"""`cmem task ...`: register tasks, train them into versions, list, show, tag and delete versions (sweeps: `together`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from continual_mem.units import human_size

from .options import at_least_one
from .output import Table, emit, fmt, json_option, metric
from .root import App, pass_app
from .together import make_options, plan_printer, task_sweep, train_several, training_options

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
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option(
    "--data",
    "data_sources",
    required=True,
    multiple=True,
    help="Image folder, builtin:digits[?classes=..], builtin:shifted-digits[?classes=..&part=train|test]; once for all tasks or once per task.",
)
@click.option("--memory", type=int, default=5, show_default=True, help="Memory tokens per layer.")
@click.option("--mode", type=click.Choice(["reuse", "full"]), default="reuse", show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Rate of the memory and class token.")
@training_options
@json_option
@pass_app
def task_train(
    app: App, names: tuple[str, ...], data_sources: tuple[str, ...], memory: int, mode: str, lr: float, **kw: Any
) -> None:
    """Train a new version of task NAME (runs unchanged under torchrun).

    With several names (A B C), one version of each, trained together in one backbone pass per
    step: the tasks must label the same images (one --data for all, or one per task).
    """
    at_least_one(max_pixels=kw["max_pixels"])
    from continual_mem import services
    from continual_mem.train import init_distributed

    if len(names) > 1 or len(data_sources) > 1:
        if mode != "reuse":
            raise click.ClickException("tasks train together in reuse mode only: train a full-mode task on its own")
        train_several(app, names, data_sources, memory, lr, kw)
        return
    options = make_options(lr, kw)  # refuses bad values and a device that is not here (ConfigError)
    request = services.TrainRequest(
        names[0],
        data_sources[0],
        memory,
        mode,
        options.val_split,
        options.skip_bad,
        options.config,
        options.max_pixels,
        options.cache_gb,
    )
    store = app.open_store()
    ctx = init_distributed(kw["device"])
    try:
        version, metrics = train_with_progress(store, request, ctx, kw["as_json"])
    finally:
        _leave_distributed()
    if not ctx.is_main:
        return
    assert version is not None  # rank 0 writes the version
    emit(
        kw["as_json"],
        version,
        f"Trained {version.ref}: val accuracy {metrics.get('val_accuracy', float('nan')):.4f}, "
        f"{metrics['epochs']:.0f} epoch(s) in {metrics['train_seconds']:.1f} s "
        f"({metrics['seconds_per_epoch']:.2f} s/epoch)",
    )


def train_with_progress(
    store: TaskStore, request: TrainRequest, ctx: DistContext, quiet: bool = False
) -> tuple[VersionInfo | None, dict[str, float]]:
    """Train with a progress bar (rank 0), shown from the first step: refusals print nothing else."""
    from tqdm import tqdm

    from continual_mem import services

    bars: list[tqdm] = []

    def on_step(p) -> None:  # type: ignore[no-untyped-def]
        if not ctx.is_main or quiet:
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
        shown = plan_printer(quiet or not ctx.is_main)
        return services.train_version(store, request, on_step=on_step, ctx=ctx, on_plan=shown)
    finally:
        for bar in bars:
            bar.close()


def _leave_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


task.add_command(task_sweep)

COMMANDS = [task]
