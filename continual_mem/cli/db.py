"""The store itself: `cmem init`, `cmem db upgrade|current` (its schema) and `cmem gc` (orphan files)."""

from __future__ import annotations

import click

from .root import App, pass_app


@click.command()
@pass_app
def init(app: App) -> None:
    """Create the store (or bring an older one's schema up to date)."""
    from store.db import head_revision, shown_url

    store = app.open_store(create=True)
    click.echo(f"Store ready at {store.home} (database {shown_url(store.db_url)}, schema {head_revision()})")


@click.group()
def db() -> None:
    """The store's database schema (alembic migrations)."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Migrate the database to the schema this code needs."""
    from store import db as store_db
    from store.artifacts import refuse_files_in_the_way

    url = app.db_url or f"sqlite:///{app.home.resolve() / 'store.db'}"
    if app.db_url is None:
        refuse_files_in_the_way(app.home)
        app.home.mkdir(parents=True, exist_ok=True)
    before = store_db.current_revision(url)
    store_db.upgrade(url)
    after = store_db.current_revision(url)
    click.echo(f"{store_db.shown_url(url)}: {before or 'empty'} -> {after}")


@db.command("current")
@pass_app
def db_current(app: App) -> None:
    """Show the database's schema revision and the one this code needs."""
    from store import db as store_db

    url = app.db_url or f"sqlite:///{app.home.resolve() / 'store.db'}"
    if app.db_url is None and not app.default_db.is_file():
        raise click.ClickException(f"no store in {app.home} (run `cmem init`)")
    current = store_db.current_revision(url)
    click.echo(
        f"database {current or 'empty'}; code {store_db.head_revision()} ({store_db.describe_revision(current)})"
    )


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_app
def gc(app: App, dry_run: bool) -> None:
    """Mark abandoned training versions failed, and remove artifact files no entry refers to (left by crashed runs)."""
    store = app.open_store()
    abandoned = store.stale_versions() if dry_run else store.fail_stale()
    if abandoned:
        verb = "would mark" if dry_run else "marked"
        refs = ", ".join(v.ref for v in abandoned)
        click.echo(f"{verb} {len(abandoned)} abandoned training version(s) failed: {refs}")
    removed = store.gc(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} orphan file(s)")
    for path in removed:
        click.echo(f"  {path}")


COMMANDS = [init, db, gc]
