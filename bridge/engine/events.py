"""What the API tells the engine about a job it has just changed in the store, and what
it asks of it.

The API writes first (create, cancel, redeliver are store scripts) and then calls one
of these; the engine reacts in this process, and in the others through the store's
notices (engine/notices.py): a job finished anywhere wakes the requests waiting for it
here, a push received here reaches the process that holds its job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge.engine.lifecycle import Advancer
from bridge.engine.runtime import Runtime
from bridge.engine.waiting import WaitOutcome, until_terminal
from bridge.model import Job
from bridge.net.util import describe_error
from bridge.upstreams.base import Cancelled, Rejected, SubmitOutcome, Transient


class JobEvents:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.advancer = Advancer(rt)

    async def accepted(self, job: Job, token: str) -> SubmitOutcome | None:
        """A job was stored under `token`: submit it upstream now, within this request.
        None when it stays queued (upstream unhealthy); a worker submits it later."""
        async with self.advancer.pushes_during(job):
            return await self.advancer.submit(job, token, notify=False)

    async def cancelled(self, job: Job) -> None:
        """A job was cancelled: stop polling it here (a replica holding it stops at the
        cancel's `done` notice, or at its next commit, which is fenced out), and stop it at
        the provider too where the protocol can: best effort, a failure is logged and the
        job stays cancelled."""
        self.rt.workers.forget(job.id)
        upstream = self.rt.upstreams.get(job.upstream)
        if upstream is None or not upstream.capabilities.cancel or job.upstream_ref is None:
            return
        ref = job.upstream_ref
        try:
            outcome = await upstream.cancel(ref)
        except Exception as e:  # best effort: never fails the client's cancel
            outcome = Transient(describe_error(e))
        self.rt.metrics.count_upstream(job.upstream, "cancel", outcome.status_code)
        if not isinstance(outcome, Cancelled):
            detail = outcome.message if isinstance(outcome, Rejected) else outcome.reason
            self.rt.log.warning("upstream cancel failed", upstream_id=ref.id, error=detail)

    def redelivery_scheduled(self, job_id: str) -> None:
        """One more delivery of a job's event is due now."""
        self.rt.workers.hint("deliver", 0, self.rt.store.keys.partition_of(job_id))

    async def until_terminal(
        self, job_id: str, deadline_s: float, read: Callable[[], Awaitable[Job]]
    ) -> tuple[Job, WaitOutcome] | None:
        """Wait for the job to be terminal, until deadline_s (event-loop time) or until the
        process drains, without polling the store (engine/waiting.py); `read` reads it.
        None when no more requests may wait here: the caller answers at once."""
        waited = await until_terminal(self.rt.waiters, job_id, deadline_s, read)
        self.rt.metrics.wait_outcomes.labels(waited[1] if waited else "refused").inc()
        return waited

    async def pushed(self, upstream: str, job_id: str) -> str:
        """A verified push for the job: due now (Store.poke), and every process is told.
        The job's status, or 'missing'."""
        status = await self.rt.store.poke(job_id)
        self.rt.metrics.pushes_received.labels(upstream).inc()
        return status
