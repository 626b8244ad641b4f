"""Background workers: claim due work from the store in batches and run it concurrently.

One `ClaimLoop` per schedule (`due`: submit/poll, `deliver`: callbacks). Each
claim is a lease: a member claimed but never committed becomes due again after
lease_s, so a crashed replica's work is picked up by another.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as StoreTimeoutError

from bridge.delivery.sender import Attempt
from bridge.engine.backoff import jittered
from bridge.engine.dispatch import Dispatcher
from bridge.engine.lifecycle import Advancer
from bridge.engine.ports import LAZY_COMMIT_S, NoWorkers
from bridge.engine.runtime import Runtime
from bridge.model import Job, JobChange
from bridge.net.util import describe_error
from bridge.obs.logs import exception_fields
from bridge.retry import exponential_s
from bridge.store import After, Claim, ClaimBatch, Commit, Remove, Schedule, Store

Step = Coroutine[Any, Any, None]  # one claimed job's work, run as a task
Handler = Callable[[list[Claim], int], Awaitable[list[Step]]]
STORE_RETRY_FIRST_S = 0.2  # a claim loop's sleep after a failed claim; doubles with each one
STORE_RETRY_MAX_S = 5.0
CLAIM_JITTER_S = 0.005  # up to this much added to a claim loop's sleep, so that replicas
# whose work falls due at the same moment do not all claim in the same instant
STEP_RETRY_S = 0.5  # after an unexpected error in a job step; doubles with each one
MAX_STEP_ERRORS = 4  # then the job fails ("internal-error")
T = TypeVar("T")


async def finish_or_cancel(
    tasks: dict[asyncio.Task[None], T], grace_s: float
) -> dict[asyncio.Task[None], T]:
    """Let tasks finish within grace_s; cancel the rest and return them with their values."""
    if tasks:
        await asyncio.wait(list(tasks), timeout=grace_s)
    unfinished = dict(tasks)
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    return unfinished


async def release_claims(store: Store, claims: list[tuple[str, str]], retry_s: float = 0.0) -> None:
    """Give leases back (due now) so another replica takes the work at once."""
    try:
        await store.release_many(claims, retry_s)
    except RedisError as e:  # the store is gone: the leases simply run out
        structlog.get_logger("pushbridge.worker").warning("could not release leases", error=str(e))


def _log_task_error(
    task: asyncio.Task[None], log: structlog.typing.FilteringBoundLogger, job_id: str | None
) -> None:
    """Retrieve a finished task's exception (a job step guards its own; this is the last
    resort), so none is left to asyncio's "never retrieved" message and its repr."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("job step failed", job_id=job_id, **exception_fields(exc))


class ClaimLoop:
    def __init__(
        self,
        store: Store,
        which: Schedule,
        handler: Handler,
        *,
        concurrency: int,
        batch_size: int,
        lease_s: float,
        max_idle_s: float,
    ) -> None:
        self.store = store
        self.which = which
        self.handler = handler
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.lease_ms = int(lease_s * 1000)
        self.max_idle_s = max_idle_s
        self.inflight: dict[asyncio.Task[None], Claim] = {}
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.on_claim: Callable[[ClaimBatch], None] | None = None
        self._wake_at = math.inf
        self._due_at = [0.0] * store.partitions  # local monotonic time each partition is due
        self._sweep_at = 0.0
        self.log = structlog.get_logger("pushbridge.worker").bind(schedule=which)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                sleep_s = await self.tick()
                failures = 0
            except RedisError as e:
                failures += 1
                sleep_s = exponential_s(failures, STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S)
                self.log.warning("store unavailable; backing off", error=str(e), sleep_s=sleep_s)
            except Exception as e:  # the loop must go on whatever one batch did
                failures += 1
                sleep_s = exponential_s(failures, STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S)
                self.log.error("claim failed; backing off", sleep_s=sleep_s, **exception_fields(e))
            await self._sleep(sleep_s)

    async def tick(self) -> float:
        """Claim and start one batch; return how long to sleep before the next.

        Only partitions whose earliest due time has come (as the last claim reported,
        or as this process scheduled it) are claimed, plus a sweep of all of them every
        max_idle_s, which finds work that other replicas scheduled.
        """
        free = self.concurrency - len(self.inflight)
        if free <= 0:
            await asyncio.wait(list(self.inflight), return_when=asyncio.FIRST_COMPLETED)
            return 0.0
        now = time.monotonic()
        if now >= self._sweep_at:
            parts, self._sweep_at = None, now + self.max_idle_s
        else:
            parts = [p for p, at in enumerate(self._due_at) if at <= now]
        if parts != []:
            await self._claim(parts, min(free, self.batch_size), now)
        wait_s = min(min(self._due_at), self._sweep_at) - time.monotonic()
        return max(0.0, wait_s) + (random.uniform(0, CLAIM_JITTER_S) if wait_s > 0 else 0.0)

    async def _claim(self, parts: list[int] | None, limit: int, now: float) -> None:
        batch = await self.store.claim(self.which, self.lease_ms, limit, parts)
        for p, due_ms in batch.next_due.items():
            due_s = math.inf if due_ms is None else (due_ms - batch.now_ms) / 1000
            self._due_at[p] = now if p in batch.full else now + due_s
        if self.on_claim is not None:
            self.on_claim(batch)
        coros = await self.handler(batch.claims, batch.now_ms)
        for claim, coro in zip(batch.claims, coros, strict=True):
            task = asyncio.create_task(coro)
            self.inflight[task] = claim
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        claim = self.inflight.pop(task, None)
        _log_task_error(task, self.log, claim.job_id if claim else None)

    def hint(self, delay_s: float, partition: int | None = None) -> None:
        """Work this process just scheduled becomes due in delay_s: wake up by then."""
        at = time.monotonic() + max(0.0, delay_s)
        for p in range(len(self._due_at)) if partition is None else (partition,):
            self._due_at[p] = min(self._due_at[p], at)
        if at < self._wake_at:
            self._wake_at = at
            self.wake.set()

    async def _sleep(self, seconds: float) -> None:
        self._wake_at = min(self._wake_at, time.monotonic() + seconds)
        while not self.stopping.is_set():
            remaining = self._wake_at - time.monotonic()
            if remaining <= 0:
                break
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), remaining)
        self._wake_at = math.inf
        await asyncio.sleep(0)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, let in-flight work finish within grace_s, release the rest."""
        self.stopping.set()
        self.wake.set()
        if self.task is not None:
            await self.task
        leftover = await finish_or_cancel(self.inflight, grace_s)
        await release_claims(self.store, [(c.job_id, c.token) for c in leftover.values()])


class HeldLeases:
    """Jobs whose lease this process keeps between polls, each with a local timer.

    The store still has them scheduled at due + lease: if this process dies, another
    replica claims them one lease late; if it is frozen past that, its next commit is
    fenced out. On shutdown the leases are given back (due now).
    """

    def __init__(
        self,
        store: Store,
        step: Callable[[Job, str], Awaitable[None]],
        max_jobs: int,
        concurrency: int,
        observe_lateness: Callable[[float], None] = lambda s: None,
    ) -> None:
        self.store = store
        self.observe_lateness = observe_lateness
        self.step = step
        self.max_jobs = max_jobs
        self.gate = asyncio.Semaphore(concurrency)
        self.timers: dict[str, tuple[asyncio.TimerHandle, str, Job]] = {}
        self.running: dict[asyncio.Task[None], tuple[str, str]] = {}
        # job id -> (token, last commit, stored lease) of its held claim
        self.leases: dict[str, tuple[str, int, int]] = {}
        self.stopping = False

    def hold(self, job: Job, token: str, delay_s: float) -> bool:
        if self.stopping or len(self.timers) >= self.max_jobs:
            return False
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay_s, self._fire, job, token, loop.time() + delay_s)
        older = self.timers.get(job.id)
        if older is not None:  # an older claim's chain: only one polls the job
            older[0].cancel()
        self.timers[job.id] = (handle, token, job)
        return True

    def jobs(self) -> list[Job]:
        """The jobs held now."""
        return [job for _, _, job in self.timers.values()]

    def forget(self, job_id: str) -> None:
        """Stop holding a job (it was cancelled): no more polls from this process."""
        timer = self.timers.pop(job_id, None)
        self.leases.pop(job_id, None)
        if timer is not None:
            timer[0].cancel()

    def poke(self, job_id: str) -> bool:
        """Run a held job's next step now; False if it is not held (now) here."""
        timer = self.timers.get(job_id)
        if timer is None:
            return False
        handle, token, job = timer
        handle.cancel()
        job.pushed_at = int(time.time() * 1000)  # polls at the usual pace from now on
        self._fire(job, token, asyncio.get_running_loop().time())
        return True

    def leased(self, job_id: str, token: str, committed_ms: int, until_ms: int) -> None:
        self.leases[job_id] = (token, committed_ms, until_ms)

    def lease_holds(self, job_id: str, token: str, now_ms: int, until_ms: int) -> bool:
        lease = self.leases.get(job_id)
        if lease is None:
            return False
        leased_token, committed_ms, stored_until_ms = lease
        recent = now_ms - committed_ms < LAZY_COMMIT_S * 1000
        return leased_token == token and stored_until_ms >= until_ms and recent

    def _fire(self, job: Job, token: str, due: float) -> None:
        self.timers.pop(job.id, None)
        task = asyncio.create_task(self._run(job, token, due))
        self.running[task] = (job.id, token)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        held = self.running.pop(task, None)
        log = structlog.get_logger("pushbridge.worker")
        _log_task_error(task, log, held[0] if held else None)

    async def _run(self, job: Job, token: str, due: float) -> None:
        try:
            async with self.gate:
                self.observe_lateness(max(0.0, asyncio.get_running_loop().time() - due))
                await self.step(job, token)
        finally:
            if job.id not in self.timers:  # not held any more: its lease is not ours to skip
                self.leases.pop(job.id, None)

    async def stop(self, grace_s: float) -> None:
        self.stopping = True
        timers, self.timers = self.timers, {}
        self.leases.clear()
        for handle, _, _ in timers.values():
            handle.cancel()
        unfinished = await finish_or_cancel(self.running, grace_s)
        claims = [(job_id, token) for job_id, (_, token, _) in timers.items()]
        await release_claims(self.store, claims + list(unfinished.values()))


class Workers:
    """The poller (`due`) and delivery (`deliver`) loops of one process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.advancer = Advancer(rt)
        self.dispatcher = Dispatcher(rt)
        w = rt.config.worker
        self.loops: dict[Schedule, ClaimLoop] = {
            "due": self._claim_loop("due", self._advance),
            "deliver": self._claim_loop("deliver", self._deliver),
        }
        self.held = HeldLeases(
            rt.store,
            self._held_step,
            w.max_sticky_jobs,
            w.concurrency,
            rt.metrics.due_lateness.labels("due").observe,
        )
        self.active = False

    def _claim_loop(self, which: Schedule, handler: Handler) -> ClaimLoop:
        w = self.rt.config.worker
        loop = ClaimLoop(
            self.rt.store,
            which,
            handler,
            concurrency=w.concurrency,
            batch_size=w.batch_size,
            lease_s=w.lease_s,
            max_idle_s=w.max_idle_s,
        )
        loop.on_claim = self._lateness_observer(which)
        return loop

    def _lateness_observer(self, which: Schedule) -> Callable[[ClaimBatch], None]:
        histogram = self.rt.metrics.due_lateness.labels(which)

        def observe(batch: ClaimBatch) -> None:
            for c in batch.claims:
                histogram.observe(max(0, batch.now_ms - c.due_ms) / 1000)

        return observe

    async def _advance(self, claims: list[Claim], now_ms: int) -> list[Step]:
        self.rt.clock_offset_ms = now_ms - time.time() * 1000
        return [
            self._guard("due", c.job, c.token, self.advancer.step(c.job, c.token, now_ms))
            if c.job
            else self._drop("due", c)
            for c in claims
        ]

    async def _deliver(self, claims: list[Claim], now_ms: int) -> list[Step]:
        return [
            self._guard("deliver", c.job, c.token, self.dispatcher.step(c.job, c.result, c.token))
            if c.job
            else self._drop("deliver", c)
            for c in claims
        ]

    async def _held_step(self, job: Job, token: str) -> None:
        await self._guard("due", job, token, self.advancer.step(job, token, self.rt.store_now_ms()))

    async def _drop(self, which: Schedule, c: Claim) -> None:
        await self._guard(
            which,
            None,
            c.token,
            self.rt.store.commit(which, c.job_id, c.token, Commit(source=Remove())),
            c.job_id,
        )

    async def _guard(
        self,
        which: Schedule,
        job: Job | None,
        token: str,
        step: Awaitable[object],
        job_id: str | None = None,
    ) -> None:
        """Run a job step; whatever it raises is logged (type and message only) and
        recorded: a failed poll/submit step is re-scheduled with backoff, a failed delivery
        step counts as a failed attempt. When the store stays unreachable past its retries,
        the lease is given back as soon as the store answers again (due at once, not after
        the lease); other store errors let the lease run out."""
        try:
            await step
        except (StoreConnectionError, StoreTimeoutError) as e:  # the store's retries ran out
            self.rt.log.warning(
                "store unreachable during job step; releasing the lease", error=str(e)
            )
            claim = (job_id or (job.id if job else ""), token)
            await release_claims(self.rt.store, [claim], self.rt.config.worker.lease_s)
        except RedisError as e:
            self.rt.log.warning("store error during job step; lease will expire", error=str(e))
        except Exception as e:
            fields = exception_fields(e)
            job_id = job.id if job else job_id
            self.rt.log.error("job step failed", job_id=job_id, schedule=which, **fields)
            if job:
                await self._record_step_error(which, job, token, e)

    async def _record_step_error(self, which: Schedule, job: Job, token: str, e: Exception) -> None:
        message = f"internal error: {describe_error(e)}"
        try:
            if which == "deliver":
                n = job.delivery_attempts + 1
                at_ms = int(time.time() * 1000)
                await self.dispatcher.record(
                    job, token, n, at_ms, Attempt("retry", None, 0, message)
                )
                return
            errors = job.step_errors + 1
            if errors >= MAX_STEP_ERRORS:
                await self.advancer.fail(job, token, "internal-error", message, step_errors=errors)
                return
            delay_ms = int(jittered(exponential_s(errors, STEP_RETRY_S)) * 1000)
            change: JobChange = {"step_errors": errors, "last_error": message}
            await self.advancer.commit(job, token, Commit(change, After(delay_ms)))
        except Exception as again:
            self.rt.log.error(
                "could not record a failed job step; its lease will expire",
                job_id=job.id,
                **exception_fields(again),
            )

    def start(self) -> None:
        for loop in self.loops.values():
            loop.start()
        self.active = True
        self.rt.workers = self

    # LocalWorkers (engine.ports), what the job steps of this process call:
    def hint(self, schedule: Schedule, delay_s: float, partition: int | None = None) -> None:
        self.loops[schedule].hint(delay_s, partition)

    def hold(self, job: Job, token: str, delay_s: float) -> bool:
        return self.held.hold(job, token, delay_s)

    def forget(self, job_id: str) -> None:
        self.held.forget(job_id)

    def poke(self, job_id: str) -> bool:
        return self.held.poke(job_id)

    def leased(self, job_id: str, token: str, committed_ms: int, until_ms: int) -> None:
        self.held.leased(job_id, token, committed_ms, until_ms)

    def lease_holds(self, job_id: str, token: str, now_ms: int, until_ms: int) -> bool:
        return self.held.lease_holds(job_id, token, now_ms, until_ms)

    def held_jobs(self) -> list[Job]:
        return self.held.jobs()

    async def deliver_now(self, job: Job, result: str | None, token: str) -> None:
        await self._guard("deliver", job, token, self.dispatcher.step(job, result, token))

    async def stop(self, grace_s: float) -> None:
        self.active = False
        self.rt.workers = NoWorkers()
        await asyncio.gather(
            self.held.stop(grace_s), *(loop.stop(grace_s) for loop in self.loops.values())
        )
