"""A heartbeat for long writes, so that a version whose process died is found and marked failed.

A training process refreshes its version's ``heartbeat_at`` every ``HEARTBEAT_INTERVAL_S`` from a
daemon thread (``Heartbeat``), independent of how long one training step takes. A process killed
outright (SIGKILL, out of memory, power cut) stops beating; a ``training`` version whose last beat
is older than ``STALE_AFTER_S`` is abandoned, and ``TaskStore.fail_stale`` marks it failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

HEARTBEAT_INTERVAL_S = 30.0
#: Ten missed beats: a busy machine may delay a beat, not ten in a row.
STALE_AFTER_S = 10 * HEARTBEAT_INTERVAL_S


class Heartbeat:
    """While open, calls ``beat`` every ``interval_s`` seconds in a daemon thread.

    A beat that fails (the database briefly locked or unreachable) is tried again at the next
    interval: a missed beat must not stop the work it reports on.
    """

    def __init__(self, beat: Callable[[], None], interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmem-heartbeat", daemon=True)
        self.failures = 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._beat()
            except Exception:  # retried at the next interval; counted for tests and callers
                self.failures += 1

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
