"""The job record: how it is stored (a flat Redis hash) and how it is shown (the API object).

The Redis hash stays the storage format: the Lua scripts read and write single fields
of it atomically. Python code sees a typed `Job`, parsed once where the store hands a
hash out (`Job.from_hash`), and changes it only through a `JobChange` that the store
writes (commit.lua) and `Job.apply` mirrors locally.

Field names are the hash's field names; tests/test_model.py checks that every field
the Lua scripts name is one of them. Times are ms since the epoch on the store's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict

import orjson


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted, not (yet) submitted upstream
    RUNNING = "running"  # submitted; polled until it finishes
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})  # worked on in the due schedule
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
DELIVERABLE = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})  # have a callback event


class DeliveryState(StrEnum):
    NONE = "none"  # no callback (yet, or ever: cancelled, or rejected at creation)
    PENDING = "pending"  # the first attempt is due
    SCHEDULED = "scheduled"  # a retry is due at next_attempt_at
    DELIVERING = "delivering"  # shown in the event body of an attempt under way
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed, or the receiver answered 410


DELIVERY_ACTIVE = frozenset(
    {DeliveryState.PENDING, DeliveryState.SCHEDULED, DeliveryState.DELIVERING}
)


@dataclass(frozen=True, slots=True)
class UpstreamRef:
    """Where a job lives at its provider, in the provider's own terms, stored with the job
    as opaque JSON. `id` is the provider's id for it (the API's `upstream_id`); `data` is
    whatever else its protocol needs to reach it again (octoai: the poll_url; fal: status,
    result and cancel URLs; RunPod: the endpoint; OpenAI and Gemini need only the id)."""

    id: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return orjson.dumps({"id": self.id, "data": dict(self.data)}).decode()

    @classmethod
    def from_json(cls, text: str) -> UpstreamRef:
        raw = orjson.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("data", {}), dict):
            raise ValueError("an upstream reference is a JSON object with an object `data`")
        return cls(str(raw.get("id", "")), raw.get("data", {}))


class JobChange(TypedDict, total=False):
    """Fields a state machine sets on a job; the store writes them (None clears a field)."""

    status: JobStatus
    upstream_ref: UpstreamRef | None
    submits: int
    polls: int
    seen_running_at: int
    last_error: str | None
    error: str | None
    result_size: int
    delivery_state: DeliveryState
    delivery_attempts: int
    last_status_code: int | None
    last_attempt_at: int
    step_errors: int
    delivery_deferrals: int


@dataclass(slots=True)
class Job:
    id: str
    tenant: str
    upstream: str  # the configured upstream's name
    status: JobStatus
    callback_url: str
    inputs: str  # JSON text, as accepted (parsed only when it is submitted)
    metadata: str  # JSON text ("null" when absent)
    deadline_ms: int  # after created_at
    created_at: int = 0
    updated_at: int = 0
    completed_at: int | None = None
    upstream_ref: UpstreamRef | None = None  # set once submitted
    submits: int = 0
    polls: int = 0
    seen_running_at: int | None = None  # when the last poll that saw it running was sent
    last_error: str | None = None  # of the last transient failure
    error: str | None = None  # JSON text of the API's error object (failed jobs)
    result_size: int | None = None  # bytes (completed jobs)
    delivery_state: DeliveryState = DeliveryState.NONE
    delivery_attempts: int = 0
    max_attempts: int | None = None  # attempt budget raised by a redeliver
    next_attempt_at: int | None = None
    last_attempt_at: int | None = None
    last_status_code: int | None = None
    step_errors: int = 0  # unexpected errors of its submit/poll steps in a row
    delivery_deferrals: int = 0  # deliveries put off (its host at capacity) since an attempt
    pushed_at: int | None = None  # when the provider's last verified push arrived (poke.lua)

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> Job:
        """Parse a stored job hash. Absent or empty fields take their defaults."""
        return cls(
            id=h.get("id", ""),
            tenant=h.get("tenant", ""),
            upstream=h.get("upstream", ""),
            status=JobStatus(h["status"]),
            callback_url=h.get("callback_url", ""),
            inputs=h.get("inputs") or "null",
            metadata=h.get("metadata") or "null",
            deadline_ms=_int(h.get("deadline_ms")) or 0,
            created_at=_int(h.get("created_at")) or 0,
            updated_at=_int(h.get("updated_at")) or 0,
            completed_at=_int(h.get("completed_at")),
            upstream_ref=_ref(h),
            submits=_int(h.get("submits")) or 0,
            polls=_int(h.get("polls")) or 0,
            seen_running_at=_int(h.get("seen_running_at")),
            last_error=h.get("last_error") or None,
            error=h.get("error") or None,
            result_size=_int(h.get("result_size")),
            delivery_state=DeliveryState(h.get("delivery_state") or DeliveryState.NONE),
            delivery_attempts=_int(h.get("delivery_attempts")) or 0,
            max_attempts=_int(h.get("max_attempts")),
            next_attempt_at=_int(h.get("next_attempt_at")),
            last_attempt_at=_int(h.get("last_attempt_at")),
            last_status_code=_int(h.get("last_status_code")),
            step_errors=_int(h.get("step_errors")) or 0,
            delivery_deferrals=_int(h.get("delivery_deferrals")) or 0,
            pushed_at=_int(h.get("pushed_at")),
        )

    def to_hash(self) -> dict[str, str | int]:
        """The stored form: every field that is set (the inverse of from_hash)."""
        return wire_fields({f.name: getattr(self, f.name) for f in fields(self)}, drop_none=True)

    def creation_fields(self) -> dict[str, str | int]:
        """What create.lua stores; it adds the id it is given and its clock's times. A
        field at its default is left out (from_hash reads it back as that default): each
        hash field costs the store some 60 bytes per job in flight."""
        h = self.to_hash()
        for written_by_the_store in ("id", "created_at", "updated_at"):
            h.pop(written_by_the_store, None)
        for f in fields(self):
            if f.default is not MISSING and getattr(self, f.name) == f.default:
                h.pop(f.name, None)
        if self.metadata == "null":
            h.pop("metadata", None)
        return h

    def stored(self, job_id: str, now_ms: int) -> None:
        """Mirror what create.lua wrote: the id and its clock's creation time."""
        self.id, self.created_at, self.updated_at = job_id, now_ms, now_ms

    def apply(self, change: JobChange, applied_ms: int, completed: bool = False) -> None:
        """Mirror a change the store applied at applied_ms (commit.lua), so that a process
        that keeps working on this job sees what the store holds."""
        for name, value in change.items():
            setattr(self, name, value)
        self.updated_at = applied_ms
        if completed:
            self.completed_at = applied_ms

    @property
    def deadline_at(self) -> int:
        return self.created_at + self.deadline_ms


JOB_FIELDS = frozenset(f.name for f in fields(Job))


def _int(value: str | None) -> int | None:
    """An integer field; None when absent, empty or unreadable (a corrupt record then
    behaves as if the field were unset)."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _ref(h: Mapping[str, str]) -> UpstreamRef | None:
    if text := h.get("upstream_ref"):
        return UpstreamRef.from_json(text)
    if poll_url := h.get("poll_url"):  # stored before upstream_ref (octoai was the only one)
        return UpstreamRef(h.get("upstream_id", ""), {"poll_url": poll_url})
    return None


def wire_fields(values: Mapping[str, Any], drop_none: bool = False) -> dict[str, str | int]:
    """Field values as the hash stores them: None as "" (a cleared field), references
    as JSON, enums as their value."""
    out: dict[str, str | int] = {}
    for name, value in values.items():
        if value is None:
            if not drop_none:
                out[name] = ""
        elif isinstance(value, UpstreamRef):
            out[name] = value.to_json()
        elif isinstance(value, StrEnum):
            out[name] = value.value
        else:
            out[name] = value
    return out


def new_job(
    tenant: str,
    upstream: str,
    inputs_json: str,
    callback_url: str,
    metadata_json: str,
    deadline_s: float,
) -> Job:
    """A job as accepted, before the store gives it an id (`Job.stored`); inputs and
    metadata come serialized (JSON text, as the API measured and checked them)."""
    return Job(
        id="",
        tenant=tenant,
        upstream=upstream,
        status=JobStatus.QUEUED,
        callback_url=callback_url,
        inputs=inputs_json,
        metadata=metadata_json,
        deadline_ms=int(deadline_s * 1000),
    )


def rfc3339(ms: int | None) -> str | None:
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_or_none(value: str | None) -> Any:
    return None if value in (None, "") else orjson.loads(value)


def webhook_id(job_id: str) -> str:
    return "msg_" + job_id[4:]


def result_inline(job: Job, max_inline_bytes: int) -> bool:
    """Whether a completed job's result goes inline in the API object and the callback
    (else by a signed result_url link): decided by its size in bytes."""
    return (job.result_size or 0) <= max_inline_bytes


def delivery_view(job: Job) -> dict[str, Any]:
    return {
        "state": job.delivery_state,
        "attempts": job.delivery_attempts,
        "last_status_code": job.last_status_code,
        "last_attempt_at": rfc3339(job.last_attempt_at),
        "next_attempt_at": rfc3339(job.next_attempt_at)
        if job.delivery_state in (DeliveryState.PENDING, DeliveryState.SCHEDULED)
        else None,
    }


def job_view(job: Job, result: Any = None, result_url: str | None = None) -> dict[str, Any]:
    """The job object of the API and of callbacks (CONTRACT §3)."""
    return {
        "id": job.id,
        "status": job.status,
        "upstream": job.upstream,
        "upstream_id": job.upstream_ref.id if job.upstream_ref else None,
        "callback_url": job.callback_url or None,  # none: the job is only read back
        "metadata": _json_or_none(job.metadata),
        "created_at": rfc3339(job.created_at),
        "updated_at": rfc3339(job.updated_at),
        "completed_at": rfc3339(job.completed_at),
        "result": result,
        "result_url": result_url,
        "error": _json_or_none(job.error),
        "delivery": delivery_view(job),
    }


def error_json(code: str, message: str, upstream_status: int | None = None) -> str:
    return orjson.dumps(
        {"code": code, "message": message[:1000], "upstream_status": upstream_status}
    ).decode()
