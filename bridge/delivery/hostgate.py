"""Per-host concurrency caps for callback attempts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

QUICK_S = 0.5  # a host whose attempts take less than this is worth waiting for
EWMA_WEIGHT = 0.2


class HostGates:
    """At most `limit` attempts run against one host at a time.

    A host at its cap whose recent attempts were quick gets the next free slot, in
    arrival order, within a short wait (four typical attempts): a busy but healthy
    receiver is served at its cap's pace instead of by re-tries that starve the
    unlucky. A host whose attempts are slow, or not yet known, is not waited for:
    the caller defers the attempt, so one hanging host cannot tie up the workers
    that deliver to every other host.
    """

    def __init__(self, limit: int, quick_s: float = QUICK_S) -> None:
        self.limit = limit
        self.quick_s = quick_s
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._typical_s: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[bool]:
        """Yields True holding a slot of `host`, or False if the caller should defer."""
        gate = self._gates.setdefault(host, asyncio.Semaphore(self.limit))
        if not await self._acquire(host, gate):
            yield False
            return
        started = time.perf_counter()
        try:
            yield True
        finally:
            gate.release()
            self._observe(host, time.perf_counter() - started)

    async def _acquire(self, host: str, gate: asyncio.Semaphore) -> bool:
        if not gate.locked():
            await gate.acquire()
            return True
        typical_s = self._typical_s.get(host)
        if typical_s is None or typical_s > self.quick_s:
            return False
        try:
            async with asyncio.timeout(max(0.05, 4 * typical_s)):
                await gate.acquire()
        except TimeoutError:
            return False
        return True

    def _observe(self, host: str, took_s: float) -> None:
        prev = self._typical_s.get(host)
        self._typical_s[host] = took_s if prev is None else prev + EWMA_WEIGHT * (took_s - prev)
