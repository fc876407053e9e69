"""`cmem serve`: the long-running server (FastAPI on uvicorn), imported only when it runs."""

from __future__ import annotations

import errno
import logging
import socket
import sys

import click

from .root import App, pass_app


@click.command()
@click.option("--alias", default="production", show_default=True, help="Serve every task deployed under this alias.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-batch", type=int, default=64, show_default=True, help="Images per dynamic batch, at most.")
@click.option(
    "--max-wait-ms",
    type=float,
    default=5.0,
    show_default=True,
    help="How long a batch may wait for more requests while the model is busy.",
)
@click.option(
    "--poll-s",
    type=float,
    default=1.0,
    show_default=True,
    help="How often the store's aliases are checked (PostgreSQL also pushes moves).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option(
    "--max-queue",
    type=int,
    default=1024,
    show_default=True,
    help="Images waiting at most; beyond, 503 with Retry-After.",
)
@click.option(
    "--max-request-mb", type=float, default=20.0, show_default=True, help="Largest request body (413 beyond)."
)
@click.option("--max-pixels", type=int, default=None, help="Largest image, in pixels (413 beyond; default 40 million).")
@click.option(
    "--max-images", type=int, default=64, show_default=True, help="Images per batch request, at most (413 beyond)."
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@pass_app
def serve(
    app: App,
    alias: str,
    host: str,
    port: int,
    max_batch: int,
    max_wait_ms: float,
    poll_s: float,
    device: str,
    max_queue: int,
    max_request_mb: float,
    max_pixels: int | None,
    max_images: int,
    log_level: str,
) -> None:
    """Answer every task deployed under ALIAS over HTTP, one backbone pass per dynamic batch.

    Follows the store: a `cmem deploy` or `cmem rollback` reaches the server within --poll-s plus
    the load time, without a restart. Endpoints: POST /v1/predict, POST /v1/predict/batch,
    GET /v1/tasks, /healthz, /readyz, /metrics. Stops on SIGTERM/SIGINT after answering what it
    has received.
    """
    from continual_mem import __version__
    from continual_mem.serve import ServeConfig, run
    from continual_mem.train import check_device
    from store.names import check_alias

    check_alias(alias)
    check_device(device)
    limits = {"max_pixels": max_pixels} if max_pixels is not None else {}
    config = ServeConfig(
        alias=alias,
        host=host,
        port=port,
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        poll_s=poll_s,
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        max_images_per_request=max_images,
        log_level=log_level,
        **limits,
    )
    try:
        config.check()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _check_port_free(host, port)
    store = app.open_store()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    click.echo(f"Serving alias {alias!r} of {store.home} on http://{host}:{port} (device {device})", err=True)
    code = run(config, store, __version__)
    if code:
        raise click.exceptions.Exit(code)


def _check_port_free(host: str, port: int) -> None:
    """Refuse before loading anything when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise click.ClickException(f"--host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise click.ClickException(f"cannot listen on {host}:{port}: {why}") from None


COMMANDS = [serve]
