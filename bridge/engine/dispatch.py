"""Delivering a terminal job's event to its callback URL, with retries and an attempt log."""

from __future__ import annotations

import time
from typing import Any

import orjson

from bridge.delivery.hostgate import MAX_DEFER_S
from bridge.delivery.sender import Attempt, webhook_headers
from bridge.engine.backoff import at_least, delivery_retry_s, jittered
from bridge.engine.runtime import Runtime
from bridge.model import (
    DELIVERABLE,
    DELIVERY_ACTIVE,
    DeliveryState,
    Job,
    JobChange,
    JobStatus,
    job_view,
    result_inline,
    rfc3339,
    webhook_id,
)
from bridge.net.util import describe_error
from bridge.store import After, Commit, Remove

DEFER_S = 0.5  # first deferral; each next one of the same job waits twice as long
QUICK_DEFER_MAX_S = 1.0  # a deferral at a host that answers quickly: at most this long


def _attempt_record(at_ms: int, a: Attempt) -> str:
    return orjson.dumps(
        {
            "at": rfc3339(at_ms),
            "status_code": a.status_code,
            "duration_ms": a.duration_ms,
            "error": a.error,
            "response_excerpt": a.excerpt,
        }
    ).decode()


class Dispatcher:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def result_fields(self, job: Job, result: str | None) -> tuple[Any, str | None]:
        """(inline result, result_url): large results go by signed link."""
        if job.status != JobStatus.COMPLETED or result is None:
            return None, None
        if result_inline(job, self.rt.config.callbacks.max_inline_result_bytes):
            return orjson.loads(result), None
        return None, self.rt.result_url(job.id)

    def event(self, job: Job, result: str | None, attempt_no: int) -> bytes:
        inline, url = self.result_fields(job, result)
        data = job_view(job, inline, url)
        data["delivery"].update(
            state=DeliveryState.DELIVERING, attempts=attempt_no, next_attempt_at=None
        )
        return orjson.dumps(
            {
                "type": f"job.{job.status}",
                "timestamp": data["completed_at"],
                "data": data,
            }
        )

    async def step(self, job: Job, result: str | None, token: str) -> None:
        if job.status not in DELIVERABLE or job.delivery_state not in DELIVERY_ACTIVE:
            await self.rt.commit("deliver", job.id, token, Commit(source=Remove()))
            return
        attempt_no = job.delivery_attempts + 1
        started_ms = int(time.time() * 1000)
        prepared = self.prepare(job, result, attempt_no, started_ms)
        if isinstance(prepared, Attempt):  # nothing to send: a failed attempt
            await self.record(job, token, attempt_no, started_ms, prepared)
            return
        body, headers = prepared
        attempt = await self.rt.deliverer.post(job.callback_url, body, headers)
        if attempt.outcome == "deferred":
            await self.defer(job, token, attempt)
            return
        await self.record(job, token, attempt_no, started_ms, attempt)

    def prepare(
        self, job: Job, result: str | None, attempt_no: int, at_ms: int
    ) -> tuple[bytes, dict[str, str]] | Attempt:
        """The signed event, or the failed attempt of an event that cannot be built."""
        try:
            body = self.event(job, result, attempt_no)
        except Exception as e:  # e.g. metadata nested too deep to serialise: never sendable
            return Attempt("gone", None, 0, f"the event cannot be serialised: {describe_error(e)}")
        try:
            secrets = self.rt.secrets.tenant_secrets(job.tenant)
            return body, webhook_headers(secrets, webhook_id(job.id), at_ms // 1000, body)
        except Exception as e:  # e.g. the tenant's secret is missing: retry on the schedule
            return Attempt("retry", None, 0, f"the event cannot be signed: {type(e).__name__}")

    async def defer(self, job: Job, token: str, a: Attempt) -> None:
        """Try again when a slot may be free. At a host that answers quickly: at the turn
        booked for it, but within QUICK_DEFER_MAX_S (turns booked while this process was
        overloaded, its own loop making every attempt look slow, would leave the receiver
        idle once it catches up: measured in bench/, the burst's last second of deliveries
        took eight). Elsewhere the longer the more often this job was deferred, so hanging
        hosts cost few store round trips however many jobs wait."""
        self.rt.metrics.delivery_deferrals.inc()
        deferrals = job.delivery_deferrals
        if a.quick_host and a.retry_after_s is not None:
            delay_s = min(a.retry_after_s, QUICK_DEFER_MAX_S)
        else:
            delay_s = at_least(min(MAX_DEFER_S, DEFER_S * 2**deferrals), a.retry_after_s)
        commit = Commit(
            fields={"delivery_deferrals": deferrals + 1},
            source=After(int(jittered(delay_s) * 1000)),
        )
        await self.rt.commit("deliver", job.id, token, commit)

    def _max_attempts(self, job: Job) -> int:
        configured = 1 + len(self.rt.config.callbacks.retry_schedule_s)
        return job.max_attempts or configured

    async def record(self, job: Job, token: str, n: int, at_ms: int, a: Attempt) -> None:
        self.rt.metrics.delivery_attempts.labels(a.outcome).inc()
        log = self.rt.log.bind(job_id=job.id, tenant=job.tenant, attempt=n)
        fields: JobChange = {
            "delivery_attempts": n,
            "last_status_code": a.status_code,
            "last_attempt_at": at_ms,
        }
        if job.delivery_deferrals:
            fields["delivery_deferrals"] = 0
        commit = Commit(fields=fields, attempt=_attempt_record(at_ms, a))
        if a.outcome == "delivered":
            fields["delivery_state"] = DeliveryState.DELIVERED
            self._observe_lag(job)
        elif a.outcome == "gone" or n >= self._max_attempts(job):
            fields["delivery_state"] = DeliveryState.FAILED
        else:
            fields["delivery_state"] = DeliveryState.SCHEDULED
            delay_s = at_least(
                delivery_retry_s(self.rt.config.callbacks.retry_schedule_s, n), a.retry_after_s
            )
            commit.source, commit.due_field = After(int(delay_s * 1000)), "next_attempt_at"
        if fields["delivery_state"] != DeliveryState.SCHEDULED:
            commit.source, commit.expire_ms = Remove(), self.rt.retention_ms
            commit.failed_delivery = fields["delivery_state"] == DeliveryState.FAILED
        log.info(
            "delivery attempt",
            outcome=a.outcome,
            status_code=a.status_code,
            error=a.error,
            state=fields["delivery_state"],
        )
        await self.rt.commit("deliver", job.id, token, commit)

    def _observe_lag(self, job: Job) -> None:
        if job.completed_at and not job.max_attempts:  # max_attempts is set by a redeliver
            lag_s = time.time() - job.completed_at / 1000
            self.rt.metrics.delivery_lag.observe(max(0.0, lag_s))
