"""The server process: state, start-up and graceful shutdown around uvicorn.

Start-up binds the port at once (`/healthz` answers, `/readyz` says 503) and loads the deployed set
in the background. SIGTERM or SIGINT: stop accepting connections, answer every request already
received (the batcher drains its queue), stop watching the store, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch
import uvicorn
from fastapi import FastAPI

from store import TaskStore

from .api import create_app
from .batcher import Batcher
from .config import ServeConfig
from .deployment import Deployment
from .engine import BatchStats, Engine
from .metrics import ServeMetrics
from .snapshot import SnapshotLoader

log = logging.getLogger("cmem.serve")


@dataclass(eq=False)
class ServerState:
    """Everything one server process holds; built before uvicorn starts."""

    config: ServeConfig
    store: TaskStore
    version: str
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    stopping: bool = False

    def __post_init__(self) -> None:
        device = torch.device(self.config.device)
        self.loader = SnapshotLoader(self.store, device, self.config.pinned_cache)
        self.engine = Engine(device, max_rows=self.config.max_batch)
        self.deployment = Deployment(self.loader, self.config.alias, self.metrics)
        self.batcher: Batcher  # made in `lifespan`: it needs the running event loop

    def _on_batch(self, stats: BatchStats, queue_depth: float) -> None:
        m = self.metrics
        m.batch_time.observe(stats.seconds)
        m.batch_images.observe(stats.images)
        m.batch_requests.observe(stats.requests)
        for tasks in stats.tasks_per_reuse_pass:
            m.tasks_per_pass.observe(tasks)
        m.full_task_runs.inc(stats.full_task_runs)
        m.queue_depth.set(queue_depth)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        c = self.config
        self.batcher = Batcher(self.engine.run, c.max_batch, c.max_wait_s, c.max_queue, self._on_batch)
        self.batcher.start()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.deployment.watch(c.poll_s, stop), name="cmem-watch")
        try:
            yield
        finally:
            self.stopping = True
            stop.set()
            await self.batcher.close()
            try:
                await asyncio.wait_for(watcher, timeout=5.0)  # it ends within a listen slice or a reload
            except TimeoutError:
                log.warning("the store watcher did not stop in 5 s; leaving it")
            log.info("stopped")


class _Server(uvicorn.Server):
    """uvicorn, except that a SIGTERM/SIGINT ends the process with exit code 0 once it has drained.

    uvicorn re-raises the captured signal after its shutdown, which would end the process by that
    signal; a graceful stop asked for by the operator is a success.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(config: ServeConfig, store: TaskStore, version: str) -> int:
    """Serve until stopped; returns the process exit code."""
    state = ServerState(config, store, version)
    app = create_app(state)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(config.shutdown_timeout_s),
        limit_concurrency=config.max_queue + 64,
        server_header=False,
    )
    server = _Server(uv_config)
    server.run()
    return 0 if server.started else 1
