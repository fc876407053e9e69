"""The root of `cmem`: the group, what every command gets (`App`, the store opened on first use),
and how errors reach the user (one `Error: ...` line for the project's own errors)."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from continual_mem.errors import Terminated

if TYPE_CHECKING:
    from store import TaskStore

DEFAULT_HOME = ".cmem"


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors raised on purpose, whose message is the whole story for the user."""
    from continual_mem.errors import ContinualMemError

    types: list[type[BaseException]] = [ContinualMemError]
    for module, name in (
        ("store.errors", "StoreError"),
        ("sqlalchemy.exc", "OperationalError"),
        ("sqlalchemy.exc", "ArgumentError"),
    ):
        loaded = sys.modules.get(module)  # only errors of modules already imported can have been raised
        if loaded is not None:
            types.append(getattr(loaded, name))
    return tuple(types)


def one_line(message: object) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= 500 else text[:497] + "..."


def user_message(exc: BaseException) -> str:
    """What the user reads: the database's own words for a database error, without SQL and parameters."""
    return one_line(getattr(exc, "orig", None) or exc)


class CmemGroup(click.Group):
    """The root group: typed errors from anywhere below become one `Error: ...` line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Terminated:
            raise click.ClickException("terminated") from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None
        except Exception as exc:
            if isinstance(exc, _user_error_types()):
                raise click.ClickException(user_message(exc)) from None
            raise


@dataclass
class App:
    """What every command gets through `ctx.obj`: where the store lives, opened on first use."""

    home: Path
    db_url: str | None
    artifact_root: str | None = None
    _store: TaskStore | None = field(default=None, repr=False)

    @property
    def default_db(self) -> Path:
        return self.home / "store.db"

    def open_store(self, create: bool = False) -> TaskStore:
        """The task store; `create` makes a new one (and upgrades an old schema, as `cmem init`)."""
        if self._store is not None:
            return self._store
        if not create and self.db_url is None and not _holds_data(self.default_db):
            raise click.ClickException(f"no store in {self.home} (run `cmem init`, or set --home / CMEM_HOME)")
        from store import TaskStore

        self._store = TaskStore(self.home, db_url=self.db_url, artifact_root=self.artifact_root, upgrade=create)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _holds_data(db: Path) -> bool:
    """A store's SQLite file: an empty file is none (SQLite would write to it on open)."""
    return db.is_file() and db.stat().st_size > 0


pass_app = click.make_pass_decorator(App)


@click.group(cls=CmemGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="CMEM_HOME",
    default=DEFAULT_HOME,
    show_default=True,
    type=click.Path(path_type=Path),
    help="Store directory (SQLite database, artifacts). Env: CMEM_HOME.",
)
@click.option(
    "--db",
    "db_url",
    envvar="CMEM_DB_URL",
    default=None,
    help="SQLAlchemy database URL instead of <home>/store.db. Env: CMEM_DB_URL.",
)
@click.option(
    "--artifacts",
    "artifact_root",
    envvar="CMEM_ARTIFACTS",
    default=None,
    help="Artifact root: a directory or an fsspec URL, shared by every replica (default <home>/artifacts). "
    "Env: CMEM_ARTIFACTS.",
)
@click.version_option(package_name="continual-mem")
@click.pass_context
def cli(ctx: click.Context, home: Path, db_url: str | None, artifact_root: str | None) -> None:
    """Grow one frozen vision transformer into many tasks with learnable memory tokens.

    Start with `cmem demo`, or: cmem init; cmem backbone pretrain NAME; cmem task register ...;
    cmem task train ...; cmem deploy ...; cmem predict ...
    """
    app = App(home=home, db_url=db_url, artifact_root=artifact_root)
    ctx.obj = app
    ctx.call_on_close(app.close)


def main() -> None:
    """The `cmem` program: SIGTERM (`kill`, `timeout`, a scheduler) stops a command as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="cmem")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()
