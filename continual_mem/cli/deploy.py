"""Aliases: `cmem deploy`, `cmem rollback`, `cmem history` and `cmem deployed` (what is served)."""

from __future__ import annotations

import getpass

import click

from continual_mem.units import human_size

from .output import Table, emit, json_option, metric
from .root import App, pass_app


def _actor() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@click.command()
@click.argument("ref")
@click.option("--alias", default="production", show_default=True)
@pass_app
def deploy(app: App, ref: str, alias: str) -> None:
    """Point ALIAS of a task at a ready version: NAME (its newest ready version) or NAME@VERSION."""
    store = app.open_store()
    version = store.get_version(ref)
    info = store.set_alias(version.task, alias, version.number, actor=_actor())
    click.echo(f"{info.task}@{alias} -> version {info.version}")


@click.command()
@click.argument("name")
@click.option("--alias", default="production", show_default=True)
@pass_app
def rollback(app: App, name: str, alias: str) -> None:
    """Move ALIAS of task NAME back to where it pointed before."""
    info = app.open_store().rollback_alias(name, alias, actor=_actor())
    click.echo(f"{info.task}@{alias} -> version {info.version} (rolled back)")


@click.command()
@click.argument("name")
@click.option("--alias", default="production", show_default=True)
@json_option
@pass_app
def history(app: App, name: str, alias: str, as_json: bool) -> None:
    """Every move of ALIAS of task NAME: when, from, to, by whom."""
    moves = app.open_store().alias_history(name, alias)
    table = Table(
        [(m.moved_at, m.kind, m.from_version, m.to_version, m.actor) for m in moves],
        ["when", "move", "from", "to", "by"],
    )
    emit(as_json, moves, table)


@click.command()
@click.option("--alias", help="Only this alias (default: all).")
@json_option
@pass_app
def deployed(app: App, alias: str | None, as_json: bool) -> None:
    """Every deployed version (alias -> version) with its metrics, backbone and size."""
    rows = app.open_store().deployed(alias)
    table = Table(
        [
            (
                e.task,
                e.alias,
                e.version,
                e.mode,
                e.memory_size,
                metric(e.metrics, "val_accuracy"),
                e.backbone,
                human_size(e.artifact_size),
                e.updated_at,
            )
            for e in rows
        ],
        ["task", "alias", "version", "mode", "memory", "val acc", "backbone", "size", "since"],
        empty="(nothing deployed: cmem deploy NAME)",
    )
    emit(as_json, rows, table)


COMMANDS = [deploy, rollback, history, deployed]
