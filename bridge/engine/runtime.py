"""The parts a bridge process runs with, built once and passed to the API and the workers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from bridge.config import Config, ConfigError, Secrets
from bridge.delivery.sender import Deliverer
from bridge.delivery.signing import ResultLinks
from bridge.delivery.urlpolicy import Resolver, UrlPolicy
from bridge.engine.backoff import lag_target
from bridge.engine.learning import Durations, running_field
from bridge.engine.ports import LocalWorkers, NoWorkers
from bridge.engine.push import PushLinks, PushState
from bridge.engine.waiting import Waiters
from bridge.model import Job
from bridge.net.client import LeanClient
from bridge.obs.metrics import Metrics
from bridge.store import After, Commit, Schedule, Store
from bridge.store.lists import SWEEP_BUDGET
from bridge.store.ratelimit import RateLimiter
from bridge.upstreams import build_upstreams
from bridge.upstreams.base import Healthy, Upstream, VerifiesPush


@dataclass
class Health:
    """Last known health of each upstream; unknown counts as healthy."""

    state: dict[str, bool] = field(default_factory=dict)

    def healthy(self, upstream: str) -> bool:
        return self.state.get(upstream, True)


@dataclass
class Runtime:
    config: Config
    secrets: Secrets
    store: Store
    upstreams: dict[str, Upstream]
    deliverer: Deliverer
    policy: UrlPolicy
    links: ResultLinks
    metrics: Metrics
    health: Health
    limiter: RateLimiter
    log: structlog.stdlib.BoundLogger
    # the worker loops of this process while they run (engine.loops.Workers installs itself)
    workers: LocalWorkers = field(default_factory=NoWorkers)
    durations: Durations = field(default_factory=Durations)
    clock_offset_ms: float = 0.0  # store clock minus local clock, from the last claim
    waiters: Waiters = field(default_factory=lambda: Waiters(10_000))  # requests waiting here
    pushes: PushState = field(default_factory=PushState)
    push_links: PushLinks | None = None  # with listen.public_url: push URLs can be made

    def push_enabled(self, upstream: str) -> bool:
        """Whether jobs of the upstream get a push URL (CONTRACT §2 `push`)."""
        u = self.upstreams.get(upstream)
        return (
            self.push_links is not None and u is not None and u.config.push and u.capabilities.push
        )

    def push_url(self, job: Job) -> str | None:
        if self.push_links is None or not self.push_enabled(job.upstream):
            return None
        return self.push_links.url(job.upstream, job.id)

    @property
    def retention_ms(self) -> int:
        return int(self.config.retention_s * 1000)

    def result_url(self, job_id: str) -> str:
        """A signed link to a job's result, valid for the retention period."""
        return self.links.url(job_id, int(time.time() + self.config.retention_s))

    def store_now_ms(self) -> int:
        """The store's clock (Redis TIME), estimated locally from the last claim."""
        return int(time.time() * 1000 + self.clock_offset_ms)

    @property
    def lease_ms(self) -> int:
        return int(self.config.worker.lease_s * 1000)

    async def commit(self, which: Schedule, job_id: str, token: str, c: Commit) -> int | None:
        """A fenced commit: the store time it was applied at, or None if a newer claim owns
        the job. Tells this process's loops when the work it scheduled is due."""
        applied = await self.store.commit(which, job_id, token, c)
        if applied is None:
            self.metrics.lost_leases.labels(which).inc()
            self.log.warning(
                "lease lost; a newer claim owns the job", job_id=job_id, schedule=which
            )
            return None
        other: Schedule = "deliver" if which == "due" else "due"
        p = self.store.keys.partition_of(job_id)
        if isinstance(c.source, After):
            self.workers.hint(which, c.source.ms / 1000, p)
        if c.target_delay_ms is not None:
            self.workers.hint(other, c.target_delay_ms / 1000, p)
        return applied


def public_url(config: Config) -> str:
    if config.listen.public_url:
        return config.listen.public_url
    host = config.listen.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{config.listen.port}"


async def build_runtime(
    config: Config,
    secrets: Secrets,
    store: Store,
    upstream_client: LeanClient,
    callback_client: LeanClient,
    resolver: Resolver | None = None,
    metrics: Metrics | None = None,
) -> Runtime:
    policy = UrlPolicy(config.callbacks, resolver)
    upstreams = build_upstreams(config, upstream_client, secrets)
    links = ResultLinks(await store.url_key(), public_url(config))
    _check_push_secrets(config, upstreams)
    push_links = None
    if config.listen.public_url:
        push_links = PushLinks(await store.push_key(), config.listen.public_url)
    rt = Runtime(
        config=config,
        secrets=secrets,
        store=store,
        upstreams=upstreams,
        deliverer=Deliverer(callback_client, config.callbacks, policy),
        policy=policy,
        links=links,
        metrics=metrics or Metrics(round_trips=store.round_trips),
        health=Health(),
        limiter=RateLimiter(store.redis, config.store.key_prefix, store.round_trips),
        log=structlog.get_logger("pushbridge"),
        waiters=Waiters(config.listen.max_waiters),
        push_links=push_links,
    )
    rt.metrics.waiters.set_function(lambda: rt.waiters.count)
    return rt


def _check_push_secrets(config: Config, upstreams: dict[str, Upstream]) -> None:
    """A push secret for a protocol that cannot check signatures would refuse every push."""
    problems = [
        f"upstreams.{name}.push_secret_env: protocol {u.protocol!r} does not sign its pushes"
        for name, u in upstreams.items()
        if u.config.push_secret_env and not isinstance(u, VerifiesPush)
    ]
    if problems:
        raise ConfigError(*problems)


async def every(
    name: str,
    interval_s: float,
    step: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    first_delay_s: float = 0.0,
) -> None:
    """Run `step` every interval_s until `stop` is set; a failing step is logged, not fatal."""
    log = structlog.get_logger("pushbridge")
    delay_s = first_delay_s
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        if stop.is_set():
            return
        try:
            await step()
        except Exception as e:  # a background loop logs and goes on
            log.warning("background step failed", step=name, error=str(e))
        delay_s = interval_s


async def check_health(rt: Runtime) -> None:
    """Check every upstream's health_url once; remember the result."""
    for name, upstream in rt.upstreams.items():
        outcome = await upstream.health()
        healthy = isinstance(outcome, Healthy)
        reason = outcome.detail if isinstance(outcome, Healthy) else outcome.reason
        if rt.health.state.get(name, True) != healthy:
            rt.log.info("upstream health changed", upstream=name, healthy=healthy, reason=reason)
        rt.health.state[name] = healthy
        if upstream.config.health_url:
            rt.metrics.count_upstream(name, "health", outcome.status_code)


async def measure_backlog(rt: Runtime) -> None:
    """Refresh the backlog gauges from the store."""
    try:
        b = await rt.store.backlog(rt.retention_ms)
    except RedisError:
        rt.metrics.store_up.set(0)
        raise
    m = rt.metrics
    m.store_up.set(1)
    m.due_polls.set(b.due_now)
    m.due_deliveries.set(b.deliveries_due_now)
    m.scheduled_deliveries.set(b.deliveries_scheduled)
    m.failed_deliveries.set(b.failed_deliveries)
    in_flight = await rt.store.lists.in_flight_by_tenant()
    for tenant in {*rt.secrets.tenants, *in_flight}:
        m.tenant_jobs_in_flight.labels(tenant).set(in_flight.get(tenant, 0))


async def sweep_lists(rt: Runtime, max_calls: int = 8) -> None:
    """Remove expired jobs from the tenants' job lists: one sweep, and more while they
    use their whole budget (each call is bounded; others' commands run between them)."""
    lists = rt.store.lists
    for _ in range(max_calls):
        examined, _removed = await lists.sweep(rt.retention_ms)
        if examined < SWEEP_BUDGET * rt.store.partitions:
            return


async def learn_durations(rt: Runtime) -> None:
    """Refresh the learned duration histograms of every upstream from the store."""
    counts = await rt.store.duration_counts()
    for job in rt.workers.held_jobs():  # still running: known only to last longer than seen so far
        if job.seen_running_at:
            field = running_field(job.upstream, (job.seen_running_at - job.created_at) / 1000)
            counts[field] = counts.get(field, 0) + 1
    targets = {
        name: lag_target(u.config.poll)
        for name, u in rt.upstreams.items()
        if u.config.poll.target_lag
    }
    await asyncio.to_thread(rt.durations.update, counts, targets)  # the estimate is CPU work
