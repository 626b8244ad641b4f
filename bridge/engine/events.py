"""What the API tells the engine about a job it has just changed in the store.

The API writes first (create, cancel, redeliver are store scripts) and then calls one
of these; the engine reacts in this process today, and across processes once push,
waiting clients and upstream cancel need it, behind the same methods.
"""

from __future__ import annotations

from bridge.engine.lifecycle import Advancer
from bridge.engine.runtime import Runtime
from bridge.upstreams.octoai import Outcome


class JobEvents:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.advancer = Advancer(rt)

    async def accepted(self, job: dict[str, str], token: str) -> Outcome | None:
        """A job was stored under `token`: submit it upstream now, within this request.
        None when it stays queued (upstream unhealthy); a worker submits it later."""
        return await self.advancer.submit(job, token, notify=False)

    def cancelled(self, job_id: str) -> None:
        """A job was cancelled: stop polling it here. A replica holding it polls at most
        once more, then its commit is fenced out."""
        self.rt.workers.forget(job_id)

    def redelivery_scheduled(self, job_id: str) -> None:
        """One more delivery of a job's event is due now."""
        self.rt.workers.hint("deliver", 0, self.rt.store.keys.partition_of(job_id))
