"""What the engine needs from a provider's async API: one interface, typed outcomes per call.

Every protocol (octoai today; replicate, runpod, fal, openai, gemini and custom next, see
CONTRACT §5b) implements `Upstream`. The engine (engine/lifecycle.py) drives any of them
the same way:

    submit(inputs)     -> Submitted(ref) | Rejected | Transient
    poll(ref)          -> Running | Done | Failed | Expired | Transient
    fetch_result(ref)  -> Fetched | Failed | Expired | Transient   (when Done has no result)
    cancel(ref)        -> Cancelled | Rejected | Transient          (when capabilities.cancel)
    health()           -> Healthy | Transient

An adapter returns these for everything its provider answers, and never raises for
anything the network or the provider does (the engine still treats an exception as
Transient, so a bug costs a retry, not a job). It sends its credentials only to the
origins configured for it, not to URLs a provider's answer names.

`UpstreamRef` (bridge.model) is what the job keeps between calls: the provider's id for
it and whatever else the protocol needs, stored as opaque JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from bridge.config import UpstreamCommon
from bridge.model import UpstreamRef

__all__ = [
    "Cancelled",
    "Capabilities",
    "Done",
    "Expired",
    "Failed",
    "Fetched",
    "Healthy",
    "Rejected",
    "Running",
    "Submitted",
    "Transient",
    "Upstream",
    "UpstreamRef",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    cancel: bool = False  # cancel() stops the job at the provider
    push: bool = False  # submit(push_url=...) makes the provider call back per job
    separate_fetch: bool = False  # the result is fetched after Done (else Done carries it)


@dataclass(frozen=True, slots=True)
class Submitted:
    """The provider accepted the job; poll it with `ref`."""

    ref: UpstreamRef
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The provider refused the request for good (a 4xx other than 404/408/425/429)."""

    status_code: int | None
    message: str


@dataclass(frozen=True, slots=True)
class Transient:
    """No answer, or an answer worth retrying (5xx, 429, timeouts, malformed bodies)."""

    reason: str
    status_code: int | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Running:
    """Still queued or running at the provider."""

    status_code: int | None = None
    detail: str = ""
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """Finished. `result` is the output (JSON bytes) when the poll answer carries it;
    else fetch_result(`fetch_ref`) gets it."""

    result: bytes | None = None
    fetch_ref: UpstreamRef | None = None
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    result: bytes  # JSON
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed (or was cancelled) at the provider; `message` is its error text."""

    message: str
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """The provider no longer knows the job or its result (404, retention passed)."""

    message: str
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Healthy:
    detail: str = ""
    status_code: int | None = None


SubmitOutcome = Submitted | Rejected | Transient
PollOutcome = Running | Done | Failed | Expired | Transient
FetchOutcome = Fetched | Failed | Expired | Transient
CancelOutcome = Cancelled | Rejected | Transient
HealthOutcome = Healthy | Transient
Outcome = SubmitOutcome | PollOutcome | FetchOutcome | CancelOutcome | HealthOutcome


class Upstream(Protocol):
    """One configured upstream. Implementations take (name, config, token, client)."""

    protocol: ClassVar[str]
    name: str

    @property
    def capabilities(self) -> Capabilities:
        """What it can do: the same for every upstream of a protocol (a class variable), or
        per upstream where its config decides (custom)."""
        ...

    @property
    def config(self) -> UpstreamCommon:
        """Its configuration: the keys every protocol has (poll policy, rate limits,
        timeouts) and its own."""
        ...

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        """Start a job with the client's inputs; `push_url` is where the provider may call
        back for this job (only when capabilities.push)."""
        ...

    async def poll(self, ref: UpstreamRef) -> PollOutcome: ...

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome: ...

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome: ...

    async def health(self) -> HealthOutcome: ...
