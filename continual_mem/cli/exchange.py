"""`cmem export` and `cmem import`: one version as one self-describing safetensors file, and back.

Every export carries a digest that import checks. With `CMEM_EXPORT_KEY` set, exports are also
signed with it (HMAC-SHA256), and imports refuse files that are not signed with that key.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .root import App, pass_app

EXPORT_KEY_VARIABLE = "CMEM_EXPORT_KEY"


def export_key() -> bytes | None:
    """The shared secret that signs and verifies exports, from `CMEM_EXPORT_KEY` (None: unsigned)."""
    key = os.environ.get(EXPORT_KEY_VARIABLE)
    return key.encode() if key else None


@click.command("export")
@click.argument("ref")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def export_cmd(app: App, ref: str, dest: Path) -> None:
    """Write version REF as one self-describing safetensors file DEST."""
    if dest.exists():
        raise click.ClickException(f"{dest} already exists")
    if not dest.parent.is_dir():
        raise click.ClickException(f"cannot write {dest}: folder {dest.parent} does not exist")
    key = export_key()
    app.open_store().export_version(ref, dest, signing_key=key)
    click.echo(f"Exported {ref} to {dest}{' (signed with CMEM_EXPORT_KEY)' if key else ''}")


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--task", "task_name", help="Import under another task name.")
@pass_app
def import_cmd(app: App, path: Path, task_name: str | None) -> None:
    """Add an exported file as a new version (its backbone must be registered here).

    The file's digest is checked, and its signature when CMEM_EXPORT_KEY is set; nothing is
    written unless every check passes.
    """
    info = app.open_store().import_version(path, task_name=task_name, signing_key=export_key(), require_adapter=True)
    click.echo(f"Imported {path} as {info.ref}")


COMMANDS = [export_cmd, import_cmd]
