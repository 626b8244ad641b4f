"""Moving a job forward: submit it upstream, poll its future, record its outcome.

Every step ends in one fenced commit (store.Commit), so a replica whose lease
ran out cannot overwrite newer state. A process that holds a job keeps its lease
across polls that are due soon (the store's score stays at due + lease, so a crash
hands the job to another replica after one lease), and delivers a finished job's
event itself, under the same fencing token: three store round trips per job plus
one per poll.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, Unpack

import orjson
from redis.exceptions import RedisError

from bridge.engine.backoff import (
    at_least,
    jittered,
    lag_target,
    poll_interval_s,
    submit_retry_s,
)
from bridge.engine.learning import interval_field
from bridge.engine.ports import lazy_margin_ms
from bridge.engine.runtime import Runtime
from bridge.model import ACTIVE, DeliveryState, Job, JobChange, JobStatus, error_json
from bridge.net.util import describe_error
from bridge.store import After, Commit, Remove
from bridge.upstreams.base import (
    Done,
    Expired,
    Failed,
    Fetched,
    FetchOutcome,
    Outcome,
    Rejected,
    Running,
    SubmitOutcome,
    Submitted,
    Transient,
)

T = TypeVar("T")


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


class Advancer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def commit(self, job: Job, token: str, c: Commit) -> bool:
        """Commit and mirror the change in `job`, which this process may keep using."""
        applied = await self.rt.commit("due", job.id, token, c)
        if applied is None:
            return False
        job.apply(c.fields, applied, completed=c.completed)
        return True

    async def reschedule(
        self,
        job: Job,
        token: str,
        delay_s: float,
        unchanged: bool = False,
        **change: Unpack[JobChange],
    ) -> None:
        """The job's next step is due in delay_s: keep holding it when that is soon.

        `unchanged`: nothing happened to the job but a poll that found it still running
        (its poll count and when it was seen running, in `change`). A held job whose
        last commit (under this token) is recent and whose stored lease outlasts the next
        poll by nearly a whole lease is then not committed: the next commit writes those
        fields (a poll that finds it finished, or a renewal, at most every LAZY_COMMIT_S)."""
        workers = self.rt.workers
        keep = workers.active and delay_s <= self.rt.config.worker.sticky_horizon_s
        if keep and unchanged:
            now_ms = self.rt.store_now_ms()
            needed_ms = now_ms + _ms(delay_s) + lazy_margin_ms(self.rt.lease_ms)
            held = workers.lease_holds(job.id, token, now_ms, needed_ms)
            if held and workers.hold(job, token, delay_s):
                for name, value in change.items():
                    setattr(job, name, value)
                return
        delay_ms = _ms(delay_s) + (self.rt.lease_ms if keep else 0)
        c = Commit(fields=change, source=After(delay_ms), held=keep)
        committed = await self.commit(job, token, c)
        if not (committed and keep):
            return
        if workers.hold(job, token, delay_s):
            workers.leased(job.id, token, job.updated_at, job.updated_at + delay_ms)
        else:  # no room to hold it: due after the delay, not after the lease
            await self.commit(job, token, Commit(source=After(_ms(delay_s))))

    async def finish(self, job: Job, token: str, c: Commit, result: str | None = None) -> None:
        """Commit a terminal status with its event due now; deliver it at once if we can."""
        workers = self.rt.workers
        direct = workers.active and c.target_delay_ms == 0
        if direct:  # the delivery stays leased to us while we make the first attempt
            c.target_delay_ms, c.due_field = self.rt.lease_ms, ""
        if await self.commit(job, token, c) and direct:
            await workers.deliver_now(job, result, token)

    def _finished(self, job: Job, outcome: str) -> None:
        self.rt.metrics.jobs_finished.labels(job.upstream, outcome).inc()
        duration_s = time.time() - job.created_at / 1000
        self.rt.metrics.job_duration.labels(job.upstream).observe(max(0.0, duration_s))

    def _count(self, job: Job, kind: str, outcome: Outcome) -> None:
        self.rt.metrics.count_upstream(job.upstream, kind, outcome.status_code)

    async def fail(
        self,
        job: Job,
        token: str,
        code: str,
        message: str,
        upstream_status: int | None = None,
        notify: bool = True,
        **change: Unpack[JobChange],
    ) -> None:
        """Terminal failure; `notify` sends the job.failed callback (if it has one)."""
        notify = notify and bool(job.callback_url)
        self._finished(job, "failed")
        self.rt.log.info("job failed", job_id=job.id, code=code, upstream=job.upstream)
        await self.finish(
            job,
            token,
            Commit(
                fields={
                    "status": JobStatus.FAILED,
                    "error": error_json(code, message, upstream_status),
                    "delivery_state": DeliveryState.PENDING if notify else DeliveryState.NONE,
                    **change,
                },
                source=Remove(),
                completed=True,
                target_delay_ms=0 if notify else None,
                expire_ms=None if notify else self.rt.retention_ms,
                due_field="next_attempt_at" if notify else "",
            ),
        )

    @contextlib.asynccontextmanager
    async def pushes_during(self, job: Job) -> AsyncIterator[None]:
        """A step of the job runs here: a push that comes meanwhile (engine/push.py) makes
        the job due again once the step is over, since the step may have seen the job
        still running."""
        pushes = self.rt.pushes
        if not self.rt.push_enabled(job.upstream):
            yield
            return
        pushes.begin(job.id)
        try:
            yield
        finally:
            pushed = pushes.end(job.id)
        if pushed and job.status in ACTIVE and not self.rt.workers.poke(job.id):
            try:
                await self.rt.store.poke(job.id)
            except RedisError as e:  # the next safety poll finds it; a push only saves lag
                self.rt.log.warning("could not act on a push", job_id=job.id, error=str(e))

    async def step(self, job: Job, token: str, now_ms: int) -> None:
        """One unit of work for a job this process holds in the `due` schedule."""
        async with self.pushes_during(job):
            await self._step(job, token, now_ms)

    async def _step(self, job: Job, token: str, now_ms: int) -> None:
        if job.status not in ACTIVE:
            await self.commit(job, token, Commit(source=Remove()))
        elif job.upstream not in self.rt.upstreams:
            await self.fail(job, token, "unknown-upstream", f"upstream {job.upstream} is gone")
        elif now_ms >= job.deadline_at:
            await self.fail(job, token, "deadline-exceeded", "poll.deadline_s passed")
        elif job.status == JobStatus.QUEUED:
            await self.submit(job, token, notify=True)
        else:
            await self.poll(job, token)

    async def submit(self, job: Job, token: str, notify: bool) -> SubmitOutcome | None:
        """Submit upstream. Returns the outcome, or None if the upstream is unhealthy."""
        name = job.upstream
        submits = job.submits + 1
        if not self.rt.health.healthy(name):
            await self.reschedule(
                job, token, submit_retry_s(submits), last_error="upstream unhealthy"
            )
            return None
        upstream = self.rt.upstreams[name]
        if await self._rate_limited(job, token, "submit", upstream.config.rate_limit.submit_per_s):
            return None
        push_url = self.rt.push_url(job)
        outcome = await self._call(
            job, "submit", lambda: upstream.submit(orjson.loads(job.inputs), push_url=push_url)
        )
        self._count(job, "submit", outcome)
        match outcome:
            case Submitted(ref=ref):
                await self.reschedule(
                    job,
                    token,
                    self._slowed(job, self.first_poll_s(job)),
                    status=JobStatus.RUNNING,
                    upstream_ref=ref,
                    submits=submits,
                )
            case Rejected(status_code=code, message=message):
                await self.fail(
                    job,
                    token,
                    "upstream-rejected",
                    message,
                    code,
                    notify=notify,
                    submits=submits,
                )
            case Transient(reason=reason, retry_after_s=retry_after_s):
                delay_s = at_least(submit_retry_s(submits), retry_after_s)
                await self.reschedule(job, token, delay_s, submits=submits, last_error=reason)
        return outcome

    async def _call(self, job: Job, step: str, call: Callable[[], Awaitable[T]]) -> T | Transient:
        """One call to the upstream. Whatever it raises (a bug, an error of a client library
        that no adapter maps) is a transient failure: retried with backoff until the
        deadline, logged by type and message only (never an exception's repr, which may
        hold the request's headers), never an exception that ends the step."""
        try:
            return await call()
        except Exception as e:
            reason = describe_error(e)
            self.rt.log.warning(
                "upstream call failed",
                job_id=job.id,
                upstream=job.upstream,
                step=step,
                error=reason,
            )
            return Transient(reason)

    async def _rate_limited(self, job: Job, token: str, kind: str, per_s: float | None) -> bool:
        """Wait for a slot of the upstream's shared rate limit, or re-schedule the job."""
        wait_s = await self.rt.limiter.acquire(job.upstream, kind, per_s)
        if wait_s <= 0:
            return False
        await self.reschedule(job, token, jittered(wait_s))
        return True

    def _elapsed_s(self, job: Job) -> float:
        return max(0.0, (self.rt.store_now_ms() - job.created_at) / 1000)

    def _learned_poll_s(self, job: Job) -> float | None:
        """From now to the next poll by the hazard rule (poll.adaptive_hazard), as learned
        from the upstream's durations (or None)."""
        poll = self.rt.upstreams[job.upstream].config.poll
        if not poll.adaptive or poll.adaptive_hazard is None:
            return None
        return self.rt.durations.next_poll_s(
            job.upstream, self._elapsed_s(job), poll.adaptive_hazard
        )

    def _target_lag_poll_s(self, job: Job, first: bool) -> float:
        """From now to the next poll on the target-lag schedule: learned from the
        upstream's durations, else every 2 x target_lag_s (engine/learning.py)."""
        target = lag_target(self.rt.upstreams[job.upstream].config.poll)
        learned = self.rt.durations.next_poll_for_lag_s(job.upstream, self._elapsed_s(job), first)
        return target.clamp(target.cold_gap_s if learned is None else learned, first)

    def first_poll_s(self, job: Job) -> float:
        """From a job's submission to its first poll."""
        poll = self.rt.upstreams[job.upstream].config.poll
        return self._target_lag_poll_s(job, first=True) if poll.target_lag else poll.initial_delay_s

    def next_poll_s(self, job: Job, polls_done: int) -> float:
        """On the target-lag schedule (the default); by the hazard rule when
        poll.adaptive_hazard is set and enough is learned; else geometric backoff. Each
        slowed down while the upstream's pushes arrive (_slowed), as the first poll is."""
        poll = self.rt.upstreams[job.upstream].config.poll
        if poll.target_lag:
            return self._slowed(job, self._target_lag_poll_s(job, first=False))
        learned = self._learned_poll_s(job)
        if learned is None:
            return self._slowed(job, poll_interval_s(poll, polls_done, self._elapsed_s(job)))
        return self._slowed(job, min(poll.max_interval_s, max(poll.min_interval_s, learned)))

    def _slowed(self, job: Job, delay_s: float) -> float:
        """Polls `push_slowdown` times further apart while the upstream's pushes arrive and
        none came for this job yet (polling stays on: the safety net), the last one still
        before the deadline."""
        rt = self.rt
        if job.pushed_at or not rt.push_enabled(job.upstream):
            return delay_s
        if not rt.pushes.arriving(job.upstream):
            return delay_s
        slowdown = rt.upstreams[job.upstream].config.poll.push_slowdown
        left_s = (job.deadline_at - rt.store_now_ms()) / 1000
        return min(delay_s * slowdown, max(delay_s, left_s / 2))

    def duration_field(self, job: Job) -> str:
        """The histogram field of this job's duration: between the last poll that saw
        it running (when that poll was sent; else its creation) and now, when it was
        seen completed."""
        last_seen_ms = job.seen_running_at or job.created_at
        return interval_field(
            job.upstream,
            max(0.0, (last_seen_ms - job.created_at) / 1000),
            self._elapsed_s(job),
        )

    async def poll(self, job: Job, token: str) -> None:
        upstream = self.rt.upstreams[job.upstream]
        polls = job.polls + 1
        ref = job.upstream_ref
        if ref is None:
            await self.fail(job, token, "upstream-failed", "running without an upstream reference")
            return
        if await self._rate_limited(job, token, "poll", upstream.config.rate_limit.poll_per_s):
            return
        sent_ms = self.rt.store_now_ms()
        outcome = await self._call(job, "poll", lambda: upstream.poll(ref))
        self._count(job, "poll", outcome)
        match outcome:
            case Done():
                await self.complete(job, token, polls, outcome)
            case Running(retry_after_s=retry_after_s):
                delay_s = at_least(self.next_poll_s(job, polls), retry_after_s)
                await self.reschedule(
                    job, token, delay_s, unchanged=True, polls=polls, seen_running_at=sent_ms
                )
            case Transient(reason=reason, retry_after_s=retry_after_s):
                delay_s = at_least(self._backed_off_s(job, polls), retry_after_s)
                await self.reschedule(job, token, delay_s, polls=polls, last_error=reason)
            case Expired(message=message, status_code=code):
                await self.fail(job, token, "upstream-expired", message, code, polls=polls)
            case Failed(message=message, status_code=code):
                await self.fail(job, token, "upstream-failed", message, code, polls=polls)

    def _backed_off_s(self, job: Job, polls_done: int) -> float:
        """After a failed poll (5xx, timeout, 429 without Retry-After): the usual next poll,
        but never sooner than geometric backoff (CONTRACT §5: back off), on any schedule:
        the target-lag one alone would poll a failing upstream at its steady pace."""
        poll = self.rt.upstreams[job.upstream].config.poll
        geometric_s = poll_interval_s(poll, polls_done, self._elapsed_s(job))
        return max(self.next_poll_s(job, polls_done), geometric_s)

    async def _result(self, job: Job, done: Done) -> FetchOutcome:
        """The result of a finished job: in the poll's answer, or fetched."""
        if done.result is not None:
            return Fetched(done.result, done.status_code)
        upstream = self.rt.upstreams[job.upstream]
        ref = done.fetch_ref or job.upstream_ref
        assert ref is not None  # polled with it
        outcome = await self._call(job, "result", lambda: upstream.fetch_result(ref))
        self._count(job, "result", outcome)
        return outcome

    async def complete(self, job: Job, token: str, polls: int, done: Done) -> None:
        outcome = await self._result(job, done)
        match outcome:
            case Transient(retry_after_s=retry_after_s, reason=reason):
                poll = self.rt.upstreams[job.upstream].config.poll
                delay_s = at_least(poll.min_interval_s, retry_after_s)
                await self.reschedule(job, token, delay_s, polls=polls, last_error=reason)
                return
            case Expired(message=message, status_code=code):
                await self.fail(job, token, "upstream-expired", message, code, polls=polls)
                return
            case Failed(message=message, status_code=code):
                await self.fail(job, token, "upstream-failed", message, code, polls=polls)
                return
        self._finished(job, "completed")
        result = outcome.result.decode()
        notify = bool(job.callback_url)  # a job without one is only read back
        await self.finish(
            job,
            token,
            Commit(
                fields={
                    "status": JobStatus.COMPLETED,
                    "polls": polls,
                    "result_size": len(outcome.result),
                    "delivery_state": DeliveryState.PENDING if notify else DeliveryState.NONE,
                },
                source=Remove(),
                completed=True,
                result=result,
                target_delay_ms=0 if notify else None,
                expire_ms=None if notify else self.rt.retention_ms,
                due_field="next_attempt_at" if notify else "",
                counters={self.duration_field(job): 1},
            ),
            result,
        )
