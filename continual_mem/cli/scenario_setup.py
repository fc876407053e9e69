"""What the `cmem scenario` commands do around the runner: check the options, open the task store
and load the backbone (`prepared`), record a run, and turn the project's errors into one-line click
errors. Torch, timm and Avalanche are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .scenario_options import BackboneChoice, DeviceChoice


@contextmanager
def clean_errors() -> Iterator[None]:
    """The project's own errors reach the user as one-line click errors, not tracebacks."""
    from continual_mem.errors import ContinualMemError

    try:
        yield
    except ContinualMemError as exc:
        raise click.ClickException(str(exc)) from None


def store_errors() -> tuple[type[BaseException], ...]:
    try:
        from store.errors import StoreError
    except ImportError:
        return ()
    return (StoreError,)


def open_store(ctx: click.Context, required: bool = False) -> Any | None:
    """The task store from the context object, or None (runs are then not recorded).

    Only `runs` requires one; the other commands say on stderr that they will not record.
    """
    opener = getattr(ctx.obj, "open_store", None)
    try:
        if opener is None:
            raise click.ClickException("no task store is configured (run this through `cmem scenario`)")
        return opener()
    except click.ClickException as exc:
        if required:
            raise
        click.echo(f"note: {exc.format_message()}; runs are not recorded", err=True)
    except store_errors() as exc:
        if required:
            raise click.ClickException(f"cannot open the task store: {exc}") from None
        click.echo(f"note: cannot open the task store ({exc}); runs are not recorded", err=True)
    return None


def record_run(store: Any | None, result: Any) -> int | None:
    """Keep a run in the store's scenario runs; returns its id (None without a store)."""
    if store is None:
        return None
    try:
        info = store.record_scenario_run(
            result.scenario,
            result.strategy,
            result.protocol,
            result.config,
            result.metrics,
            result.accuracy_matrix,
            wall_time_s=result.wall_time_s,
        )
    except store_errors() as exc:
        raise click.ClickException(f"cannot record the run in the task store: {exc}") from None
    return int(info.id)


def check_memory_sizes(model: Any, specs: list[Any]) -> None:
    """Refuse memory strategies with more memory tokens than the backbone has tokens per image."""
    from continual_mem.model import check_memory_tokens

    for spec in specs:
        if spec.entry.takes_memory:
            check_memory_tokens(model, spec.memory)


def prepared(
    ctx: click.Context, backbone: BackboneChoice, devices: DeviceChoice
) -> tuple[Any | None, Any, dict[str, str]]:
    """Check the options, then open the store (required for a registered backbone) and load the
    backbone: (store or None, backbone, provenance as recorded)."""
    backbone.check()
    devices.check()
    store = open_store(ctx, required=backbone.registered)
    model, provenance = backbone.load(store)
    return store, model, provenance.to_dict()


def summary_line(result: Any, run_id: int | None) -> str:
    from scenarios.report import pct

    m = result.metrics
    task_id = f", task-id {pct(m['task_id_accuracy'])}%" if m.get("task_id_accuracy") is not None else ""
    stored = f" (run #{run_id})" if run_id is not None else ""
    return (
        f"{result.scenario} {result.protocol}-incremental {result.strategy}: average accuracy "
        f"{pct(m['average_accuracy'])}%, forgetting {pct(m['forgetting'])}%, BWT {pct(m['bwt'])}%{task_id}, "
        f"{result.wall_time_s:.0f} s{stored}"
    )
