"""Background delivery of alarms and hooks, so a slow or dead receiver never holds up refreshing.

``submit`` only puts a job in a bounded in-memory queue and returns; a few worker tasks deliver with
exponential backoff and jitter. When the queue is full the *oldest* job is dropped (and counted): the
newest state of an account matters more than an old one.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import structlog
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential_jitter

from refresher.domain import RefresherError
from refresher.metrics import Metrics

log = structlog.get_logger("refresher.alerts")

Send = Callable[[], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]
Done = Callable[[bool], None]  # told once per job: True when delivered, False when given up or dropped


class DeliveryError(RefresherError):
    """A delivery failed. The message is safe to log: it names the receiver, never its URL or secret."""


@dataclass
class _Job:
    kind: str  # "alert" | "hook"
    name: str  # channel name, or app name for hooks
    send: Send
    attempts: int
    done: Done | None = None
    order: Hashable | None = None  # jobs with the same key are delivered one after the other, in order

    def settle(self, delivered: bool) -> None:
        if self.done is None:
            return
        try:
            self.done(delivered)
        except Exception:  # a caller's bookkeeping never crashes a worker
            log.exception("delivery.done_callback_failed", kind=self.kind, name=self.name)


class Dispatcher:
    """A bounded queue and a few workers that deliver with retries."""

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        queue_size: int = 1000,
        workers: int = 4,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = asyncio.Event()
        self._workers_wanted = workers
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._busy: set[Hashable] = set()  # order keys with a job being delivered
        self._idle = asyncio.Event()
        self._idle.set()
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._closed = False
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Jobs queued or being delivered."""
        return len(self._queue) + self._in_flight

    async def start(self) -> None:
        if self._workers:
            return
        self._closed = False
        self._workers = [asyncio.create_task(self._work(), name=f"delivery-{n}") for n in range(self._workers_wanted)]

    def submit(
        self,
        kind: str,
        name: str,
        send: Send,
        attempts: int = 5,
        done: Done | None = None,
        *,
        order: Hashable | None = None,
    ) -> None:
        """Queue one delivery and return at once; ``done`` learns how it ended. Jobs given the same
        ``order`` key start only after the one before them ended (an alarm before its resolution)."""
        job = _Job(kind, name, send, max(1, attempts), done, order)
        if self._closed:
            self._count_drop(kind)
            log.warning("delivery.dropped", kind=kind, name=name, reason="dispatcher closed")
            job.settle(False)
            return
        while len(self._queue) >= self.queue_size:
            old = self._queue.popleft()
            self._count_drop(old.kind)
            log.warning("delivery.dropped", kind=old.kind, name=old.name, reason="queue full")
            old.settle(False)
        self._queue.append(job)
        self._idle.clear()
        self._ready.set()

    def _count_drop(self, kind: str) -> None:
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.delivery_dropped(kind)

    async def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                self._ready.clear()
                if self._in_flight == 0 and not self._queue:
                    self._idle.set()
                await self._ready.wait()
                continue
            self._in_flight += 1
            if job.order is not None:
                self._busy.add(job.order)
            try:
                await self._deliver(job)
            finally:
                self._in_flight -= 1
                if job.order is not None:
                    self._busy.discard(job.order)
                    self._ready.set()  # a job waiting behind this one may start now
                if not self._queue and self._in_flight == 0:
                    self._idle.set()

    def _next_job(self) -> _Job | None:
        """The oldest queued job whose order key is not being delivered (usually the first)."""
        for index, job in enumerate(self._queue):
            if job.order is None or job.order not in self._busy:
                del self._queue[index]
                return job
        return None

    async def _deliver(self, job: _Job) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(job.attempts),
            wait=wait_exponential_jitter(
                multiplier=self._initial_delay, max=self._max_delay, jitter=self._initial_delay
            ),
            sleep=self._sleep,
            reraise=True,
        )
        attempt_no = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    try:
                        await job.send()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning(
                            "delivery.attempt_failed",
                            kind=job.kind,
                            name=job.name,
                            attempt=attempt_no,
                            of=job.attempts,
                            error_class=type(exc).__name__,
                            # Only our own errors carry a message known to be safe; httpx's quote URLs.
                            error=str(exc) if isinstance(exc, DeliveryError) else None,
                        )
                        raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a delivery never crashes its worker
            self.failed += 1
            log.error(
                "delivery.failed",
                kind=job.kind,
                name=job.name,
                attempts=attempt_no,
                error_class=type(exc).__name__,
                error=str(exc) if isinstance(exc, DeliveryError) else None,
            )
            self._count(job, "failure")
            job.settle(False)
            return
        self.delivered += 1
        self._count(job, "success")
        job.settle(True)

    def _count(self, job: _Job, outcome: str) -> None:
        if self.metrics is None:
            return
        if job.kind == "hook":
            self.metrics.hook_sent(job.name, outcome)
        else:
            self.metrics.alert_sent(job.name, outcome)

    async def drain(self, grace: float) -> bool:
        """Wait until nothing is queued or in flight; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    async def aclose(self, grace: float) -> None:
        """Deliver what is queued within ``grace`` seconds, then cancel the rest (counted as dropped)."""
        self._closed = True
        if self._workers:
            drained = await self.drain(grace)
            if not drained:
                log.warning("delivery.shutdown_timeout", pending=self.pending)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while self._queue:
            job = self._queue.popleft()
            self._count_drop(job.kind)
