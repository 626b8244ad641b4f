"""Requests waiting for a job to finish (CONTRACT §3: `Prefer: wait=N`, `?wait=N`).

A waiting request costs no store round trips while it waits: it registers here, reads
the job, and sleeps until one of these wakes it, then reads the job again:
- the process's notice subscription says the job became terminal (engine/notices.py;
  the job may have finished in any process over the same store);
- that subscription was made again (notices may have been lost meanwhile: every waiter
  reads once more);
- its time is up, or the process drains (SIGTERM): it answers with the job as it is.

The number of waiting requests per process is bounded: beyond `limit`, `watch` gives
None and the request answers at once, as if it had not asked to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

from bridge.model import TERMINAL, Job

WaitOutcome = Literal["terminal", "timeout", "shutdown", "refused"]
MAX_WAIT_S = 60  # CONTRACT §3: N <= 60


class Waiters:
    """The waiting requests of one process, by job id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.closed = False
        self._by_job: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event | None]:
        """An event set whenever the job may have changed; None when no more requests may
        wait here (the bound, or draining)."""
        if self.closed or self.count >= self.limit:
            yield None
            return
        woken = asyncio.Event()
        self._by_job.setdefault(job_id, set()).add(woken)
        self.count += 1
        try:
            yield woken
        finally:
            self.count -= 1
            events = self._by_job.get(job_id)
            if events is not None:
                events.discard(woken)
                if not events:
                    del self._by_job[job_id]

    def wake(self, job_id: str) -> None:
        for woken in self._by_job.get(job_id, ()):
            woken.set()

    def wake_all(self) -> None:
        for events in self._by_job.values():
            for woken in events:
                woken.set()

    def close(self) -> None:
        """The process drains: no request waits any more; those waiting answer now."""
        self.closed = True
        self.wake_all()


async def until_terminal(
    waiters: Waiters, job_id: str, deadline_s: float, read: Callable[[], Awaitable[Job]]
) -> tuple[Job, WaitOutcome] | None:
    """The job once it is terminal, or as it is at `deadline_s` (event-loop time) or when
    the process drains; None when it may not wait here (then nothing was read). `read`
    reads the job from the store (and raises if it is gone or not the caller's)."""
    loop = asyncio.get_running_loop()
    with waiters.watch(job_id) as woken:
        if woken is None:
            return None
        while True:
            woken.clear()  # before reading: a notice that comes during the read wakes us
            job = await read()
            if job.status in TERMINAL:
                return job, "terminal"
            if waiters.closed:
                return job, "shutdown"
            remaining_s = deadline_s - loop.time()
            if remaining_s <= 0:
                return job, "timeout"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), remaining_s)
