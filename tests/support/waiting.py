"""Waiting for a condition instead of sleeping for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, every_s: float = 0.05
) -> bool:
    """True as soon as `check()` is; False if it is not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every_s)
    return True


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """eventually() for a condition read without awaiting (state in this process)."""

    async def check() -> bool:
        return condition()

    return await eventually(check, timeout_s)
