"""Upstream rate limits held across all replicas together (GCRA in Redis, Redis TIME)."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis, RedisCluster

from bridge.store.scripts import Scripts

MAX_WAIT_S = 1.0


class RateLimiter:
    """`acquire` reserves a slot and sleeps until it, or says how long until one is free."""

    def __init__(
        self, redis: Redis | RedisCluster, prefix: str, round_trips: Counter[str] | None = None
    ):
        self.prefix = prefix
        self.round_trips = Counter() if round_trips is None else round_trips
        self._scripts = Scripts(redis)
        self._script = self._scripts.load("ratelimit")

    def key(self, upstream: str, kind: str) -> str:
        return f"{self.prefix}:{{rl:{upstream}:{kind}}}"

    async def acquire(
        self, upstream: str, kind: str, per_s: float | None, max_wait_s: float = MAX_WAIT_S
    ) -> float:
        """0.0 once a slot is ours (after waiting for it); else the seconds to come back in.

        A slot is used within one interval of its time: if this process woke up later
        than that (a stalled event loop), the slot is dropped and a new one reserved, so
        late wake-ups cannot bunch requests above the rate.
        """
        if per_s is None:
            return 0.0
        loop = asyncio.get_running_loop()
        interval_s = 1 / per_s
        while True:
            self.round_trips["ratelimit"] += 1
            reserved, wait_us = await self._scripts.call(
                self._script,
                [self.key(upstream, kind)],
                [int(1_000_000 * interval_s), int(max_wait_s * 1_000_000)],
            )
            if not reserved:
                return wait_us / 1_000_000
            slot = loop.time() + wait_us / 1_000_000
            if wait_us > 0:
                await asyncio.sleep(wait_us / 1_000_000)
            if loop.time() - slot <= interval_s:
                return 0.0
