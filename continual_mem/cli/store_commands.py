"""Commands that only talk to the task store: none of them imports torch, timm or Avalanche."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from . import App, pass_app
from .output import echo_json, echo_table, fmt, human_size, metric

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _actor() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# ------------------------------------------------------------------------------------- store
@click.command()
@pass_app
def init(app: App) -> None:
    """Create the store (or bring an older one's schema up to date)."""
    from store.db import head_revision

    store = app.open_store(create=True)
    click.echo(f"Store ready at {store.home} (database {_safe_url(store.db_url)}, schema {head_revision()})")


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.group()
def db() -> None:
    """The store's database schema (alembic migrations)."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Migrate the database to the schema this code needs."""
    from store import db as store_db

    url = app.db_url or f"sqlite:///{app.home.resolve() / 'store.db'}"
    if app.db_url is None:
        app.home.mkdir(parents=True, exist_ok=True)
    before = store_db.current_revision(url)
    store_db.upgrade(url)
    after = store_db.current_revision(url)
    click.echo(f"{_safe_url(url)}: {before or 'empty'} -> {after}")


@db.command("current")
@pass_app
def db_current(app: App) -> None:
    """Show the database's schema revision and the one this code needs."""
    from store import db as store_db

    url = app.db_url or f"sqlite:///{app.home.resolve() / 'store.db'}"
    if app.db_url is None and not app.default_db.is_file():
        raise click.ClickException(f"no store in {app.home} (run `cmem init`)")
    current, head = store_db.current_revision(url), store_db.head_revision()
    state = "up to date" if current == head else "run `cmem db upgrade`"
    click.echo(f"database {current or 'empty'}; code {head} ({state})")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_app
def gc(app: App, dry_run: bool) -> None:
    """Remove artifact files no entry refers to (left by crashed runs)."""
    removed = app.open_store().gc(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} orphan file(s)")
    for path in removed:
        click.echo(f"  {path}")


# ------------------------------------------------------------------------------------- backbones
@click.group()
def backbone() -> None:
    """Frozen ViT backbones: add (hub or local weights), pretrain here, list."""


@backbone.command("list")
@json_option
@pass_app
def backbone_list(app: App, as_json: bool) -> None:
    """Registered backbones."""
    rows = app.open_store().list_backbones()
    if as_json:
        echo_json(rows)
        return
    echo_table(
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


# ------------------------------------------------------------------------------------- tasks
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
        from continual_mem.data import load_source

        class_names = load_source(data_source).class_names  # type: ignore[arg-type]
    info = store.register_task(name, backbone_name, class_names, description)
    if as_json:
        echo_json(info)
    else:
        click.echo(
            f"Registered task {info.name} on {info.backbone}: {len(info.class_names)} classes ({', '.join(info.class_names)})"
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
    if as_json:
        echo_json(rows)
        return
    echo_table(
        [(t.name, t.backbone, len(t.class_names), fmt(t.aliases), fmt(t.tags), t.created_at) for t in rows],
        ["task", "backbone", "classes", "aliases", "tags", "created"],
    )


@task.command("show")
@click.argument("name")
@json_option
@pass_app
def task_show(app: App, name: str, as_json: bool) -> None:
    """One task: classes, aliases, tags and its versions."""
    store = app.open_store()
    info = store.get_task(name)
    versions = store.list_versions(name, include_deleted=True)
    if as_json:
        echo_json({"task": info, "versions": versions})
        return
    click.echo(f"task:        {info.name}{'  (archived)' if info.archived else ''}")
    click.echo(f"backbone:    {info.backbone}")
    click.echo(f"classes:     {', '.join(info.class_names)}")
    click.echo(f"description: {info.description or '-'}")
    click.echo(f"aliases:     {fmt(info.aliases) or '-'}")
    click.echo(f"tags:        {fmt(info.tags) or '-'}")
    click.echo("")
    _versions_table(versions)


def _versions_table(versions: list) -> None:
    echo_table(
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
    """A task's versions, oldest first."""
    versions = app.open_store().list_versions(name, status=status, include_deleted=include_deleted)
    if as_json:
        echo_json(versions)
    else:
        _versions_table(versions)


@task.command("delete")
@click.argument("ref")
@pass_app
def task_delete(app: App, ref: str) -> None:
    """Delete version REF (NAME@V); its number is never reused."""
    info = app.open_store().delete_version(ref)
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


# ------------------------------------------------------------------------------------- deploy
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
    if as_json:
        echo_json(moves)
        return
    echo_table(
        [(m.moved_at, m.kind, m.from_version, m.to_version, m.actor) for m in moves],
        ["when", "move", "from", "to", "by"],
    )


@click.command()
@click.option("--alias", help="Only this alias (default: all).")
@json_option
@pass_app
def deployed(app: App, alias: str | None, as_json: bool) -> None:
    """Every deployed version (alias -> version) with its metrics, backbone and size."""
    rows = app.open_store().deployed(alias)
    if as_json:
        echo_json(rows)
        return
    echo_table(
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


# ------------------------------------------------------------------------------------- exchange
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


COMMANDS = [init, db, gc, backbone, task, deploy, rollback, history, deployed, export_cmd, import_cmd]
