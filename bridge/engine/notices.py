"""What a process does with the job notices of every process (store/notify.py).

One subscription per process, whatever its role:
- `done`: the requests waiting here for that job wake (engine/waiting.py), and a job
  held here stops being polled (it was cancelled through another process);
- `push`: the upstream's pushes arrive (its polls slow down, engine/push.py); a job made
  due now is claimed at once (the claim loops are woken for its partition); a job held
  here runs its next step now; a job whose step runs here now is made due again when the
  step ends;
- (re)subscribed: every waiting request reads its job once more, since notices may have
  been lost while the subscription was down.
"""

from __future__ import annotations

import asyncio
import contextlib

from bridge.engine.runtime import Runtime
from bridge.store.notify import Notice, Subscriber


class Notices:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.subscriber = Subscriber(
            rt.store.redis, rt.store.keys, self.on_notice, rt.waiters.wake_all
        )
        self._task: asyncio.Task[None] | None = None

    def on_notice(self, notice: Notice) -> None:
        rt = self.rt
        if notice.kind == "done":  # terminal, perhaps cancelled through another process
            rt.workers.forget(notice.job_id)
            rt.waiters.wake(notice.job_id)
            return
        if notice.upstream in rt.upstreams:
            rt.pushes.seen(notice.upstream)
        rt.pushes.mark(notice.job_id)  # acted on when its step here ends
        if notice.how == "due":
            rt.workers.hint("due", 0, rt.store.keys.partition_of(notice.job_id))
        elif notice.how == "held":
            rt.workers.poke(notice.job_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self.subscriber.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
