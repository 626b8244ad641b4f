"""Reading request bodies within a time limit and a per-process memory budget.

A body costs memory while it is handled: its bytes, their serialized copies, and the
Python objects it parses into (orjson makes a 72-byte object of a 3-byte `{}`). Each
request reserves its bytes from one budget per process as they arrive, the rest of its
cost once the body is measured (before it is parsed), and gives it all back when it is
answered. When the budget is spent, a request waits a moment, then is answered 503
`overloaded` with Retry-After, so a burst of large bodies cannot exhaust the process's
memory (the Helm chart's limit is 512 MiB).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request

from bridge.api.problems import Problem

COPIES = 4  # the body, its serialized inputs, their parsed and re-serialized copies upstream
OBJECT_BYTES_PER_BODY_BYTE = 32  # `{"a":{}},`: 9 bytes on the wire, 256 as Python objects
OBJECT_BYTES_PER_VALUE = 100  # any value costs at most this (empty object: 72 bytes)
BUDGET_WAIT_S = 2.0  # how long a request waits for room in the budget before 503
CLOSE = {"Connection": "close"}  # after a body timeout: the client is stalled anyway


def body_cost_bytes(body_bytes: int, values: int) -> int:
    """Memory a job body of this size, holding this many JSON values, may cost while it
    is handled. While it is read, a body costs its bytes."""
    objects = min(OBJECT_BYTES_PER_BODY_BYTE * body_bytes, OBJECT_BYTES_PER_VALUE * values)
    return COPIES * body_bytes + objects


class MemoryBudget:
    """Bytes that the requests in flight may cost at once. One request bigger than the
    whole budget is let through when it is alone."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._freed = asyncio.Event()

    def _fits(self, n_bytes: int, own_bytes: int) -> bool:
        alone = self.used_bytes == own_bytes
        return alone or self.used_bytes + n_bytes <= self.limit_bytes

    async def take(self, n_bytes: int, deadline: float, own_bytes: int = 0) -> bool:
        """Reserve n_bytes more for a request already holding own_bytes, waiting until the
        (monotonic) deadline at most."""
        while not self._fits(n_bytes, own_bytes):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return False
            freed = self._freed
            try:
                await asyncio.wait_for(freed.wait(), remaining_s)
            except TimeoutError:
                return False
        self.used_bytes += n_bytes
        return True

    def give(self, n_bytes: int) -> None:
        self.used_bytes -= n_bytes
        self._freed.set()  # wake every waiter; each checks whether it fits now
        self._freed = asyncio.Event()


class Reservation:
    """One request's share of the budget; it grows as the body arrives."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held_bytes = 0
        self._deadline = time.monotonic() + BUDGET_WAIT_S

    async def grow_to(self, n_bytes: int) -> None:
        extra = n_bytes - self.held_bytes
        if extra <= 0:
            return
        if not await self.budget.take(extra, self._deadline, self.held_bytes):
            raise Problem(
                503,
                "overloaded",
                "too many large requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.held_bytes = n_bytes

    def shrink_to(self, n_bytes: int) -> None:
        if n_bytes < self.held_bytes:
            self.budget.give(self.held_bytes - n_bytes)
            self.held_bytes = n_bytes


@asynccontextmanager
async def reservation(budget: MemoryBudget) -> AsyncIterator[Reservation]:
    r = Reservation(budget)
    try:
        yield r
    finally:
        r.shrink_to(0)


def _too_large(limit_bytes: int) -> Problem:
    # no Connection: close: closing while the client still sends makes it miss the answer
    return Problem(413, "payload-too-large", f"body exceeds {limit_bytes} bytes")


async def read_body(
    request: Request, limit_bytes: int, timeout_s: float, reserved: Reservation
) -> bytearray:
    """The whole body: 413 beyond limit_bytes (from Content-Length before reading, or while
    reading), 408 if it has not arrived within timeout_s, 503 if the budget has no room.
    A client that disconnects raises starlette's ClientDisconnect."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit():
        if len(declared) > 18 or int(declared) > limit_bytes:
            raise _too_large(limit_bytes)
        await reserved.grow_to(int(declared))
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit_bytes:
                    raise _too_large(limit_bytes)
                await reserved.grow_to(len(body) + len(chunk))
                body += chunk
    except TimeoutError:
        raise Problem(
            408, "request-timeout", f"the body did not arrive within {timeout_s:g} s", headers=CLOSE
        ) from None
    return body
