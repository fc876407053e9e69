"""Follows the store's alias: polls it (and on PostgreSQL listens), reloads, swaps snapshots.

A reload loads what the alias now points at next to what is serving, then swaps one reference.
A task whose new version cannot be loaded (missing or tampered file, another backbone) keeps
serving its old version; the failure is kept in the snapshot, shown by `/v1/tasks`, logged
once and counted in the metrics, and retried at every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime

from store import DeployedEntry

from .metrics import ServeMetrics
from .snapshot import Snapshot, SnapshotLoader, empty_snapshot, wanted_keys

log = logging.getLogger("cmem.serve")
LISTEN_SLICE_S = 0.5


class Deployment:
    """The snapshot being served, and the loop that keeps it equal to the store's alias."""

    def __init__(self, loader: SnapshotLoader, alias: str, metrics: ServeMetrics) -> None:
        self.loader = loader
        self.alias = alias
        self.metrics = metrics
        self.snapshot: Snapshot = empty_snapshot(alias)
        self.ready = False
        self.store_error: str | None = None
        self.started_at = datetime.now(UTC)
        self._lock = asyncio.Lock()

    async def refresh(self) -> Snapshot:
        """Compare the alias with what is served; load and swap where they differ."""
        async with self._lock:
            try:
                entries = await asyncio.to_thread(self.loader.deployed, self.alias)
            except Exception as exc:  # the database is down: keep serving what is loaded
                self._store_unreachable(exc)
                return self.snapshot
            self.store_error = None
            current = self.snapshot
            if self.ready and wanted_keys(entries) == dict(current.wanted) and current.complete:
                return current
            built = await asyncio.to_thread(self.loader.build, entries, current, current.generation + 1)
            self._publish(current, built, entries)
            return self.snapshot

    async def watch(self, poll_s: float, stop: asyncio.Event) -> None:
        """Refresh every `poll_s`, and at once when PostgreSQL announces an alias move."""
        listener = await self._listener()
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:  # a bug must not stop the server from following the store
                log.exception("reload of alias %r failed", self.alias)
                self.metrics.reloads.labels("failed").inc()
            listener = await self._pause(listener, poll_s, stop)
        if listener is not None:
            listener.close()

    async def _pause(self, listener, poll_s: float, stop: asyncio.Event):  # type: ignore[no-untyped-def]
        """Until the next poll, an announced move, or the stop; returns the listener if it still works.

        The listener waits in short slices on a worker thread, so a stop is never held up by it.
        """
        deadline = time.monotonic() + poll_s
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if listener is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), remaining)
                return None
            try:
                if await asyncio.to_thread(listener.wait, min(remaining, LISTEN_SLICE_S)):
                    return listener
            except Exception as exc:
                log.warning("alias notifications lost (%s); polling every %.1f s", _one_line(exc), poll_s)
                listener.close_quietly()
                listener = None
        return listener

    async def _listener(self):  # type: ignore[no-untyped-def]
        try:
            listener = await asyncio.to_thread(self.loader.store.alias_listener)
        except Exception as exc:
            log.warning("cannot listen for alias moves (%s); polling only", _one_line(exc))
            return None
        if listener is not None:
            log.info("listening for alias moves (PostgreSQL NOTIFY), polling as a fallback")
        return listener

    # ------------------------------------------------------------------------------ swapping
    def _publish(self, current: Snapshot, built: Snapshot, entries: list[DeployedEntry]) -> None:
        served_now = {t: s.key for t, s in current.tasks.items()}
        served_next = {t: s.key for t, s in built.tasks.items()}
        if served_next == served_now:  # nothing new can serve yet: keep the generation
            built = dataclasses.replace(built, generation=current.generation, tasks=current.tasks)
        self.snapshot = built
        self._report(current, built, entries)
        if not self.ready:  # after the first load, whole or not: failures show in /v1/tasks and the metrics
            self.ready = True
            self.metrics.ready.set(1)
            failed = f", {len(built.failures)} failed to load" if built.failures else ""
            log.info("ready: %d task(s) under alias %r%s", len(built.tasks), self.alias, failed)

    def _report(self, current: Snapshot, built: Snapshot, entries: list[DeployedEntry]) -> None:
        now = datetime.now(UTC)
        moved_at = {e.task: e.updated_at for e in entries}
        changed = [t for t, s in built.tasks.items() if current.tasks.get(t) is not s]
        for task in changed:
            was = current.tasks.get(task)
            log.info("serving %s%s", built.tasks[task].ref, f" (was {was.ref})" if was else "")
            if task in moved_at and moved_at[task] >= self.started_at:
                self.metrics.deploy_to_serve.observe(max(0.0, (now - moved_at[task]).total_seconds()))
        for task in sorted(set(current.tasks) - set(built.tasks)):
            log.info("no longer serving %s (alias %r removed)", current.tasks[task].ref, self.alias)
            self.metrics.served_version.remove(task)
        for task, served in built.tasks.items():
            self.metrics.served_version.labels(task).set(served.version)
        for task, failure in built.failures.items():
            if current.failures.get(task) is not failure:
                kept = f"; still serving {built.tasks[task].ref}" if task in built.tasks else ""
                log.error("cannot load %s@%d: %s%s", task, failure.wanted_version, failure.error, kept)
        for task in set(current.failures) | set(built.failures):
            self.metrics.reload_failing.labels(task).set(1 if task in built.failures else 0)
        result = "ok" if not built.failures else ("partial" if changed else "failed")
        self.metrics.reloads.labels(result).inc()
        self.metrics.generation.set(built.generation)

    def _store_unreachable(self, exc: Exception) -> None:
        message = _one_line(exc)
        if message != self.store_error:
            log.error("cannot read alias %r from the store: %s (still serving generation %d)", self.alias, message, self.snapshot.generation)  # fmt: skip
        self.store_error = message
        self.metrics.reloads.labels("failed").inc()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
