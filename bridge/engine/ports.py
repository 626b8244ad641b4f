"""The ports between the API and the engine, and between the engine's parts.

`LocalWorkers` is what the job steps ask of the worker loops of *this* process: wake up
when new work is due, keep a job's lease between polls, deliver a finished job at once.
An api-only process has no loops; it gets `NoWorkers`, which holds nothing and wakes no
one (the work is claimed from the store by a worker process).

`JobEvents` is what the API tells the engine about a job it changed: accepted (submit it
now), cancelled, redelivery scheduled. Today both sides live in one process and these are
plain calls; push, waiting clients and upstream cancel will carry them across processes
behind the same methods.
"""

from __future__ import annotations

from typing import Protocol

from bridge.model import Job
from bridge.store import Schedule

LAZY_COMMIT_S = 10.0  # a held job's polls that change nothing are committed at most this often


def lazy_margin_ms(lease_ms: int) -> int:
    """How long a held job's stored lease must outlast its next poll for that poll's
    commit to be skipped: the lease less the longest a commit may be put off (half the
    lease when the lease is that short), so a slow step still finishes inside its lease."""
    return max(lease_ms // 2, lease_ms - int(LAZY_COMMIT_S * 1000))


class LocalWorkers(Protocol):
    def hint(self, schedule: Schedule, delay_s: float, partition: int | None = None) -> None:
        """Work just scheduled in `schedule` becomes due in delay_s."""

    def hold(self, job: Job, token: str, delay_s: float) -> bool:
        """Keep the job's lease and run its next step in delay_s; False if not possible.
        A timer of the job's from an older claim (token) is cancelled."""

    def forget(self, job_id: str) -> None:
        """Stop holding the job (it was cancelled)."""

    def poke(self, job_id: str) -> bool:
        """Run a held job's next step now (its provider pushed); False if not held here."""

    def leased(self, job_id: str, token: str, committed_ms: int, until_ms: int) -> None:
        """A held job was committed under token at committed_ms, its lease stored until
        until_ms."""

    def lease_holds(self, job_id: str, token: str, now_ms: int, until_ms: int) -> bool:
        """Whether a held job's stored lease, committed under this token, lasts until
        until_ms and its last commit is recent enough (LAZY_COMMIT_S) to skip committing a
        poll that changed nothing. Another token's lease (a newer claim) never holds."""

    def held_jobs(self) -> list[Job]:
        """The jobs whose lease this process holds now."""

    @property
    def active(self) -> bool:
        """Whether worker loops run here, so that `hold` and `deliver_now` can be used."""

    async def deliver_now(self, job: Job, result: str | None, token: str) -> None:
        """Make the first delivery attempt of a finished job under the caller's lease."""


class NoWorkers:
    """The `LocalWorkers` of a process without worker loops (role api, or stopping)."""

    active = False

    def hint(self, schedule: Schedule, delay_s: float, partition: int | None = None) -> None:
        return None

    def hold(self, job: Job, token: str, delay_s: float) -> bool:
        return False

    def forget(self, job_id: str) -> None:
        return None

    def poke(self, job_id: str) -> bool:
        return False

    def leased(self, job_id: str, token: str, committed_ms: int, until_ms: int) -> None:
        return None

    def lease_holds(self, job_id: str, token: str, now_ms: int, until_ms: int) -> bool:
        return False

    def held_jobs(self) -> list[Job]:
        return []

    async def deliver_now(self, job: Job, result: str | None, token: str) -> None:
        raise RuntimeError("no delivery loop in this process")
