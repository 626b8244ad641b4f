"""The job record: how it is stored (a flat Redis hash) and how it is shown (the API object)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

TERMINAL = frozenset({"completed", "failed", "cancelled"})
DELIVERABLE = frozenset({"completed", "failed"})


def rfc3339(ms: str | int | None) -> str | None:
    if ms in (None, ""):
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int_or_none(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def _json_or_none(value: str | None) -> Any:
    return None if value in (None, "") else orjson.loads(value)


def webhook_id(job_id: str) -> str:
    return "msg_" + job_id[4:]


def new_job_fields(
    tenant: str,
    upstream: str,
    inputs_json: str,
    callback_url: str,
    metadata_json: str,
    deadline_s: float,
) -> dict[str, Any]:
    """The stored fields of a new job; inputs and metadata come serialized (JSON text)."""
    return {
        "tenant": tenant,
        "upstream": upstream,
        "status": "queued",
        "callback_url": callback_url,
        "inputs": inputs_json,
        "metadata": metadata_json,
        "deadline_ms": int(deadline_s * 1000),
        "delivery_state": "none",
        "delivery_attempts": 0,
        "polls": 0,
        "submits": 0,
    }


def delivery_view(job: dict[str, str]) -> dict[str, Any]:
    return {
        "state": job.get("delivery_state") or "none",
        "attempts": int(job.get("delivery_attempts") or 0),
        "last_status_code": _int_or_none(job.get("last_status_code")),
        "last_attempt_at": rfc3339(job.get("last_attempt_at")),
        "next_attempt_at": rfc3339(job.get("next_attempt_at"))
        if job.get("delivery_state") in ("pending", "scheduled")
        else None,
    }


def job_view(
    job: dict[str, str], result: Any = None, result_url: str | None = None
) -> dict[str, Any]:
    """The job object of the API and of callbacks (CONTRACT §3)."""
    return {
        "id": job["id"],
        "status": job["status"],
        "upstream": job["upstream"],
        "upstream_id": job.get("upstream_id") or None,
        "callback_url": job["callback_url"],
        "metadata": _json_or_none(job.get("metadata")),
        "created_at": rfc3339(job["created_at"]),
        "updated_at": rfc3339(job["updated_at"]),
        "completed_at": rfc3339(job.get("completed_at")),
        "result": result,
        "result_url": result_url,
        "error": _json_or_none(job.get("error")),
        "delivery": delivery_view(job),
    }


def error_json(code: str, message: str, upstream_status: int | None = None) -> str:
    return orjson.dumps(
        {"code": code, "message": message[:1000], "upstream_status": upstream_status}
    ).decode()
