"""`cmem export` and `cmem import`: one version as one self-describing safetensors file, and back."""

from __future__ import annotations

from pathlib import Path

import click

from .root import App, pass_app


@click.command("export")
@click.argument("ref")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def export_cmd(app: App, ref: str, dest: Path) -> None:
    """Write version REF as one self-describing safetensors file DEST."""
    if dest.exists():
        raise click.ClickException(f"{dest} already exists")
    app.open_store().export_version(ref, dest)
    click.echo(f"Exported {ref} to {dest}")


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--task", "task_name", help="Import under another task name.")
@pass_app
def import_cmd(app: App, path: Path, task_name: str | None) -> None:
    """Add an exported file as a new version (its backbone must be registered here)."""
    info = app.open_store().import_version(path, task_name=task_name)
    click.echo(f"Imported {path} as {info.ref}")


COMMANDS = [export_cmd, import_cmd]
