"""Prometheus metrics, on a registry owned by the app (no module-level state)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENESS_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
LAG_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 7200)


class RoundTrips(Collector):
    """Exposes the store's own count of network round trips (one per call or pipeline)."""

    def __init__(self, tally: Tally[str]) -> None:
        self.tally = tally

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "pushbridge_store_round_trips", "Round trips to the store by operation", labels=["op"]
        )
        for op, n in sorted(self.tally.items()):
            family.add_metric([op], n)
        yield family


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, round_trips: Tally[str] | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if round_trips is not None:
            r.register(RoundTrips(round_trips))
        self.jobs_submitted = Counter(
            "pushbridge_jobs_submitted", "Jobs accepted by the API", ["upstream"], registry=r
        )
        self.jobs_finished = Counter(
            "pushbridge_jobs_finished",
            "Jobs that reached a terminal status",
            ["upstream", "outcome"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "pushbridge_upstream_requests",
            "Requests to upstreams by kind and outcome",
            ["upstream", "kind", "status"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            "pushbridge_delivery_attempts", "Callback attempts by outcome", ["outcome"], registry=r
        )
        self.delivery_deferrals = Counter(
            "pushbridge_delivery_deferrals",
            "Deliveries put off (0.5 s) because their host was at per_host_concurrency",
            registry=r,
        )
        self.delivery_lag = Histogram(
            "pushbridge_delivery_lag_seconds",
            "Upstream completion to receiver's 2xx",
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.job_duration = Histogram(
            "pushbridge_job_duration_seconds",
            "Job creation to terminal status",
            ["upstream"],
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.due_polls = Gauge(
            "pushbridge_due_polls", "Submit/poll work that is due now (backlog)", registry=r
        )
        self.due_deliveries = Gauge(
            "pushbridge_due_deliveries", "Callback deliveries that are due now", registry=r
        )
        self.scheduled_deliveries = Gauge(
            "pushbridge_scheduled_deliveries",
            "Callback deliveries waiting (due or later)",
            registry=r,
        )
        self.failed_deliveries = Gauge(
            "pushbridge_failed_deliveries",
            "Retained jobs whose delivery failed for good (redeliver them)",
            registry=r,
        )
        self.tenant_jobs_created = Counter(
            "pushbridge_tenant_jobs_created", "Jobs created, by tenant", ["tenant"], registry=r
        )
        self.tenant_jobs_refused = Counter(
            "pushbridge_tenant_jobs_refused",
            "Job creations refused (429) by a tenant limit: rate (limits.jobs_per_s) or "
            "in_flight (limits.max_jobs_in_flight)",
            ["tenant", "limit"],
            registry=r,
        )
        self.tenant_jobs_in_flight = Gauge(
            "pushbridge_tenant_jobs_in_flight",
            "The tenant's jobs queued or running (read from the store)",
            ["tenant"],
            registry=r,
        )
        self.store_up = Gauge("pushbridge_store_up", "1 if the store answered", registry=r)
        self.due_lateness = Histogram(
            "pushbridge_due_lateness_seconds",
            "How late claimed work ran versus its due time",
            ["schedule"],
            buckets=LATENESS_BUCKETS_S,
            registry=r,
        )
        self.lost_leases = Counter(
            "pushbridge_lost_leases",
            "Commits refused because a newer claim exists",
            ["schedule"],
            registry=r,
        )

        self.waiters = Gauge(
            "pushbridge_waiters", "Requests waiting for a job to finish (Prefer: wait)", registry=r
        )
        self.wait_outcomes = Counter(
            "pushbridge_wait_outcomes",
            "Waiting requests by how they ended: terminal, timeout, shutdown, refused (bound)",
            ["outcome"],
            registry=r,
        )
        self.pushes_received = Counter(
            "pushbridge_pushes_received",
            "Verified pushes from providers (each makes its job due now)",
            ["upstream"],
            registry=r,
        )
        self.pushes_refused = Counter(
            "pushbridge_pushes_refused",
            "Pushes refused: url (unknown upstream, job or mac), signature, body",
            ["upstream", "reason"],
            registry=r,
        )

    def count_upstream(self, upstream: str, kind: str, status_code: int | None) -> None:
        status = "error" if status_code is None else str(status_code)
        self.upstream_requests.labels(upstream, kind, status).inc()
