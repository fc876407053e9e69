"""The one output path of every command: JSON with `--json`, else text for people (tables, lines).

A command computes its result once and hands it to `emit` with its human form: a `Table`, a line,
or a function that prints. Records (dataclasses), datetimes and containers become plain JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click

__all__ = [
    "Table",
    "echo_json",
    "echo_json_line",
    "echo_table",
    "emit",
    "fmt",
    "json_option",
    "metric",
    "to_jsonable",
]

#: The `--json` flag of every command that prints data; the value reaches the command as `as_json`.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@dataclass(frozen=True)
class Table:
    """A plain aligned table; `empty` is printed when there is no row."""

    rows: Sequence[Sequence[Any]]
    headers: Sequence[str]
    empty: str = "(none)"

    def echo(self) -> None:
        echo_table(self.rows, self.headers, self.empty)


def emit(as_json: bool, value: Any, human: Table | str | Callable[[], None], *, json_lines: bool = False) -> None:
    """Print a command's result: `value` as JSON with `--json`, else `human` (a table, a line, or a printer).

    `json_lines` prints an iterable `value` as one compact JSON object per line (a stream of answers).
    """
    if as_json:
        if json_lines:
            for item in value:
                echo_json_line(item)
        else:
            echo_json(value)
    elif isinstance(human, Table):
        human.echo()
    elif isinstance(human, str):
        click.echo(human)
    else:
        human()


def to_jsonable(value: Any) -> Any:
    """Records (dataclasses), datetimes and containers as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))


def echo_json_line(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), separators=(",", ":")))


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def echo_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], empty: str = "(none)") -> None:
    """A plain aligned table; `empty` is printed when there is no row."""
    cells = [[fmt(c) for c in row] for row in rows]
    if not cells:
        click.echo(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    click.echo(line.rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def metric(metrics: dict[str, Any] | None, key: str) -> Any:
    return (metrics or {}).get(key)
