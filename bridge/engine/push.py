"""Pushes from providers (CONTRACT §5b): per-job push URLs, what a push does, and
whether an upstream's pushes arrive.

A push URL is `{listen.public_url}/v1/push/{upstream}/{job id}/{mac}`, the mac an HMAC
of (upstream, job id) under a key kept in the store and shared by every replica: an
unguessable capability, checked in constant time before anything touches the store.

A verified push only makes the job due now (Store.poke): the result is always what the
provider answers to pushbridge's own poll, so a forged push can neither finish a job
early nor change its result. Where a claim holds the job, poke.lua leaves it to the
holder, which learns of the push from the notice (engine/notices.py): it runs a held
job's next step at once, or, when the push came during a step (a poll or the submit
under way), makes the job due again when that step ends (`PushState`).

Polling stays on as the safety net: while an upstream's pushes arrive (one was seen by
this process within PUSH_TRUST_S; every process sees every push's notice), its polls are
`poll.push_slowdown` times further apart, so a lost push costs lag, never the job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from urllib.parse import quote

PUSH_TRUST_S = 600.0  # an upstream's pushes "arrive" while its last one is this recent
MAC_RE = re.compile(r"[A-Za-z0-9_-]{32}")  # unpadded urlsafe base64 of 24 bytes


class PushLinks:
    """Per-job push URLs and their check."""

    def __init__(self, key: bytes, base_url: str) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def mac(self, upstream: str, job_id: str) -> str:
        message = f"push\0{upstream}\0{job_id}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:24]
        return base64.urlsafe_b64encode(digest).decode()

    def url(self, upstream: str, job_id: str) -> str:
        mac = self.mac(upstream, job_id)
        return f"{self.base_url}/v1/push/{quote(upstream, safe='')}/{job_id}/{mac}"

    def verify(self, upstream: str, job_id: str, mac: str) -> bool:
        if not MAC_RE.fullmatch(mac):
            return False
        return hmac.compare_digest(self.mac(upstream, job_id).encode(), mac.encode())


class PushState:
    """What one process knows of pushes: the jobs whose steps run here now (a push that
    comes meanwhile is acted on when the step ends), and when each upstream's last push
    was seen."""

    def __init__(self, trust_s: float = PUSH_TRUST_S) -> None:
        self.trust_s = trust_s
        self._in_flight: dict[str, bool] = {}  # job id -> a push came during its step
        self._last_push: dict[str, float] = {}  # upstream -> monotonic time

    def begin(self, job_id: str) -> None:
        self._in_flight[job_id] = False

    def end(self, job_id: str) -> bool:
        """The step is over: whether a push came during it."""
        return self._in_flight.pop(job_id, False)

    def mark(self, job_id: str) -> bool:
        """A push came for the job: noted if a step of it runs here (True)."""
        if job_id not in self._in_flight:
            return False
        self._in_flight[job_id] = True
        return True

    def seen(self, upstream: str) -> None:
        self._last_push[upstream] = time.monotonic()

    def arriving(self, upstream: str) -> bool:
        """Whether the upstream's pushes arrive (one was seen recently)."""
        last = self._last_push.get(upstream)
        return last is not None and time.monotonic() - last <= self.trust_s

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
