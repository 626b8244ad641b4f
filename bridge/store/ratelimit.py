"""Rate limits held across all replicas together (GCRA in Redis, Redis TIME): the
upstreams' submits and polls, and the jobs each tenant creates."""

from __future__ import annotations

import asyncio
from collections import Counter

from bridge.store.client import StoreClient
from bridge.store.scripts import Scripts

MAX_WAIT_S = 1.0


class RateLimiter:
    """`acquire` reserves a slot and sleeps until it, or says how long until one is free."""

    def __init__(self, redis: StoreClient, prefix: str, round_trips: Counter[str] | None = None):
        self.prefix = prefix
        self.round_trips = Counter() if round_trips is None else round_trips
        self._scripts = Scripts(redis)
        self._script = self._scripts.load("ratelimit")

    def key(self, upstream: str, kind: str) -> str:
        return f"{self.prefix}:{{rl:{upstream}:{kind}}}"

    def tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}:{{rl-tenant:{tenant}}}"

    async def admit(self, tenant: str, per_s: float, burst: int) -> float:
        """Whether the tenant may create a job now, at `per_s` with `burst` at once:
        0.0 if so (the job is counted), else the seconds until it may (nothing counted).
        Never waits."""
        self.round_trips["ratelimit"] += 1
        interval_us = int(1_000_000 / per_s)
        tolerance_us = interval_us * (burst - 1)
        reserved, wait_us = await self._scripts.call(
            self._script, [self.tenant_key(tenant)], [interval_us, tolerance_us]
        )
        if reserved:
            return 0.0
        return float(wait_us - tolerance_us) / 1_000_000

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
            wait_s = int(wait_us) / 1_000_000
            if not reserved:
                return wait_s
            slot = loop.time() + wait_s
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if loop.time() - slot <= interval_s:
                return 0.0
