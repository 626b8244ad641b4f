"""Per-destination concurrency caps for callback attempts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

QUICK_S = 0.5  # a host whose attempts take less than this is worth waiting for
EWMA_WEIGHT = 0.2
MAX_IDLE_ENTRIES = 4096  # destinations remembered while nobody is sending to them
MAX_DEFER_S = 30.0  # a deferred attempt comes back within this, whatever is predicted
MIN_HOLD_S = 0.05
STALLED_TYPICALS = 8  # an attempt under way this many typical durations is stalled

Destination = tuple[str, int]  # (address connected to, port)


@dataclass
class _Gate:
    slots: asyncio.Semaphore
    users: int = 0  # holders and waiters; an entry with none may be forgotten
    typical_s: float | None = None  # EWMA of attempt durations
    started: list[float] = field(default_factory=list)  # when each holder got its slot
    promised_at: float = 0.0  # the turn promised to the last deferred attempt

    def observe(self, took_s: float) -> None:
        prev = self.typical_s
        self.typical_s = took_s if prev is None else prev + EWMA_WEIGHT * (took_s - prev)


class HostGates:
    """At most `limit` attempts run against one destination (address and port) at a time,
    whatever names lead to it.

    A destination at its cap whose recent attempts were quick gets the next free slot, in
    arrival order, within a short wait (four typical attempts): a busy but healthy
    receiver is served at its cap's pace instead of by re-tries that starve the
    unlucky. A destination whose attempts are slow, or not yet known, is not waited for:
    the caller defers the attempt (for `book_turn_s`), so one hanging host cannot tie
    up the workers that deliver to every other host. Idle destinations beyond
    `max_idle_entries` are forgotten, oldest first, so the table stays bounded.
    """

    def __init__(
        self,
        limit: int,
        quick_s: float = QUICK_S,
        max_hold_s: float = math.inf,
        max_idle_entries: int = MAX_IDLE_ENTRIES,
        max_defer_s: float = MAX_DEFER_S,
    ) -> None:
        self.limit = limit
        self.quick_s = quick_s
        self.max_hold_s = max_hold_s  # an attempt is cut after this long
        self.max_idle_entries = max_idle_entries
        self.max_defer_s = max_defer_s
        self._gates: OrderedDict[Destination, _Gate] = OrderedDict()

    def __len__(self) -> int:
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def slot(self, dest: Destination) -> AsyncIterator[bool]:
        """Yields True holding a slot of `dest`, or False if the caller should defer."""
        gate = self._enter(dest)
        try:
            if not await self._acquire(gate):
                yield False
                return
            started = time.perf_counter()
            gate.started.append(started)
            try:
                yield True
            finally:
                gate.started.remove(started)
                gate.slots.release()
                gate.observe(time.perf_counter() - started)
        finally:
            gate.users -= 1
            self._forget_idle()

    def quick(self, dest: Destination) -> bool:
        """Whether dest's recent attempts were quick (a busy but healthy receiver)."""
        gate = self._gates.get(dest)
        return gate is not None and self._quick(gate)

    def _quick(self, gate: _Gate) -> bool:
        """Quick attempts lately, and none under way stalled: the average of finished
        attempts stays low while every slot hangs, until the hung ones time out."""
        typical_s = gate.typical_s
        if typical_s is None or typical_s > self.quick_s:
            return False
        stalled_from = time.perf_counter() - STALLED_TYPICALS * max(typical_s, MIN_HOLD_S)
        return all(started >= stalled_from for started in gate.started)

    def book_turn_s(self, dest: Destination) -> float:
        """Book a turn for an attempt deferred now; return how long it should wait: until
        about when a slot frees for it, after the turns booked by attempts deferred before
        it, but not longer than max_defer_s. So waiting attempts come back spread out,
        each about when it can run, instead of all retrying at once."""
        gate = self._gates.get(dest)
        if gate is None or not gate.started:
            return 0.0
        now = time.perf_counter()
        held_s = [now - s for s in gate.started]
        # a holder takes its typical time, and at least as long again as it has run so
        # far (one hung for 4 s is unlikely to finish in the next 0.1 s); at most max_hold_s
        expected_s = [
            min(max(gate.typical_s or 0.0, 2 * h, MIN_HOLD_S), self.max_hold_s) for h in held_s
        ]
        first_free_at = now + max(0.0, min(e - h for e, h in zip(expected_s, held_s, strict=True)))
        turn_s = max(expected_s) / self.limit
        at = min(max(first_free_at, gate.promised_at + turn_s), now + self.max_defer_s)
        gate.promised_at = at
        return at - now

    def _enter(self, dest: Destination) -> _Gate:
        gate = self._gates.get(dest)
        if gate is None:
            gate = self._gates[dest] = _Gate(asyncio.Semaphore(self.limit))
        else:
            self._gates.move_to_end(dest)
        gate.users += 1
        return gate

    def _forget_idle(self) -> None:
        """Drop the least recently used idle entries beyond max_idle_entries."""
        excess = len(self._gates) - self.max_idle_entries
        if excess <= 0:
            return
        idle = (d for d, g in self._gates.items() if g.users == 0)
        for dest in list(itertools.islice(idle, excess)):
            del self._gates[dest]

    async def _acquire(self, gate: _Gate) -> bool:
        if not gate.slots.locked():
            await gate.slots.acquire()
            return True
        if not self._quick(gate):
            return False
        try:
            async with asyncio.timeout(max(0.05, 4 * (gate.typical_s or 0.0))):
                await gate.slots.acquire()
        except TimeoutError:
            return False
        return True
