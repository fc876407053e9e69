"""Dynamic batching across requests and tasks, off the event loop.

One bounded queue of requests. When the model is idle, a request runs at once; while a batch
runs, requests gather, and the next batch takes them up to `max_batch` images, waiting at most
`max_wait_s` after its oldest request arrived. A full queue refuses at once (`QueueFull`), so
overload shows as fast 503s, never as unbounded latency. Inference runs in one worker thread;
the event loop only moves requests and answers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .engine import BatchStats, Job, JobAnswer

RunBatch = Callable[[Sequence[Job]], tuple[list[JobAnswer], BatchStats]]


class QueueFull(Exception):
    """The queue holds `max_queue` images already: the caller answers 503 with Retry-After."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


@dataclass
class Timing:
    queue_s: float
    inference_s: float
    batch_images: int
    batch_requests: int


@dataclass(eq=False)
class _Pending:
    job: Job
    enqueued: float
    future: asyncio.Future[tuple[JobAnswer, Timing]]
    images: int = field(init=False)

    def __post_init__(self) -> None:
        self.images = len(self.job.images)


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[BatchStats, float], None] = lambda stats, queue_depth: None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._idle_since = time.monotonic()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cmem-inference")
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._worker = asyncio.create_task(self._loop(), name="cmem-batcher")

    async def submit(self, job: Job) -> tuple[JobAnswer, Timing]:
        """Queue one request and wait for its answer (raises QueueFull or ShuttingDown at once)."""
        if self._closing:
            raise ShuttingDown()
        images = len(job.images)
        if self._queued_images + images > self.max_queue:
            raise QueueFull()
        item = _Pending(job, time.monotonic(), asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._queued_images += images
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Take no new work, answer everything queued, then stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------ the worker
    async def _loop(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather()
            batch = self._take()
            await self._execute(batch)
            self._idle_since = time.monotonic()

    async def _gather(self) -> None:
        """Wait for more requests only if the oldest one arrived while a batch was running."""
        oldest = self._pending[0]
        if oldest.enqueued >= self._idle_since:
            return
        deadline = oldest.enqueued + self.max_wait_s
        while self._queued_images < self.max_batch and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        """Whole requests, oldest first, up to `max_batch` images (a larger request runs alone)."""
        batch = [self._pending.popleft()]
        images = batch[0].images
        while self._pending and images + self._pending[0].images <= self.max_batch:
            item = self._pending.popleft()
            batch.append(item)
            images += item.images
        self._queued_images -= images
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a client that went away is not computed
        if not live:
            return
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            answers, stats = await loop.run_in_executor(self._executor, self._run_batch, [p.job for p in live])
        except Exception as exc:
            if len(live) > 1:  # isolate the request that fails; the others are still answered
                for item in live:
                    await self._execute([item])
            elif not live[0].future.done():
                live[0].future.set_exception(exc)
            return
        self._on_batch(stats, self._queued_images)
        for item, answer in zip(live, answers):
            if not item.future.done():
                timing = Timing(started - item.enqueued, stats.seconds, stats.images, stats.requests)
                item.future.set_result((answer, timing))
