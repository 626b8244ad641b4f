"""The engine of one process: its worker loops (roles all and worker) and the background
steps every role runs (upstream health, backlog gauges, learned durations)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Literal

from bridge.engine.loops import Workers
from bridge.engine.runtime import Runtime, check_health, every, learn_durations, measure_backlog
from bridge.obs.logs import log_loop_exception

Role = Literal["all", "api", "worker"]
DURATIONS_INTERVAL_S = 10.0


class Engine:
    def __init__(self, rt: Runtime, role: Role) -> None:
        self.rt = rt
        self.role = role
        self.workers = Workers(rt) if role in ("all", "worker") else None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    def start(self) -> None:
        rt, w, stop = self.rt, self.rt.config.worker, self._stop
        # the first health check waits a moment, so that an upstream served by this very
        # process (the dev-mode emulator, mounted beside the API) is listening by then
        self._spawn(
            every(
                "health",
                w.health_interval_s,
                lambda: check_health(rt),
                stop,
                first_delay_s=min(0.5, w.health_interval_s),
            )
        )
        self._spawn(every("backlog", w.health_interval_s, lambda: measure_backlog(rt), stop))
        if self.workers:
            self.workers.start()
            self._spawn(every("durations", DURATIONS_INTERVAL_S, lambda: learn_durations(rt), stop))
        rt.log.info("bridge started", role=self.role, upstreams=sorted(rt.upstreams))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._background.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        """Stop claiming, let in-flight work finish within the grace period, give back the
        leases of what did not, stop the background steps."""
        self._stop.set()
        if self.workers:
            await self.workers.stop(self.rt.config.worker.shutdown_grace_s)
        await asyncio.gather(*self._background)
        self.rt.log.info("bridge stopped", role=self.role)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """The engine, started; stopped on exit. Meanwhile an exception that no task
        retrieved is logged with its type and message only, never a repr that could carry
        request headers (an upstream token)."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(log_loop_exception)
        self.start()
        try:
            yield self
        finally:
            await self.stop()
            loop.set_exception_handler(previous_handler)
