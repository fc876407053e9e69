"""`cmem`: register, train, deploy, predict and query tasks; run continual-learning scenarios.

This package is the composition root: one module per noun (`db`, `backbone`, `task`, `deploy`,
`exchange`, `predict`, `serve`, `demo`, `scenario`), each defining its commands and groups, registered on
the root group (`root`) here; `scenario` keeps `compare` and `results` in `scenario_compare` and
shares its options (`scenario_options`) and setup (`scenario_setup`) with them. Every command prints through `output.emit`. Modules import click
and nothing heavy: torch, timm and Avalanche are imported inside the commands that need them
(through `continual_mem.services` or `scenarios`), the store (SQLAlchemy) inside the commands
that open it, so `cmem --help` and store-only commands start fast.
"""

from __future__ import annotations

from . import backbone, db, demo, deploy, exchange, predict, scenario, serve, task
from .root import App, cli, main, one_line, pass_app

for _module in (db, backbone, task, deploy, exchange, predict, serve, demo, scenario):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

__all__ = ["App", "cli", "main", "one_line", "pass_app"]
