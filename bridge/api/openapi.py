"""The OpenAPI 3.1 description of the API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from bridge import __version__
from bridge.api.jobs import (
    JOB_FIELDS,
    MAX_INPUT_DEPTH,
    MAX_METADATA_BYTES,
    MAX_UPSTREAM_CHARS,
)
from bridge.api.jsonshape import INT64_MIN, UINT64_MAX
from bridge.model import DeliveryState, JobStatus
from bridge.store.lists import CURSOR_PATTERN, MAX_LIMIT

TS = {"type": ["string", "null"], "format": "date-time"}
PROBLEM_CODES = {
    400: "invalid request",
    401: "missing or unknown API key",
    404: "not found",
    408: "the body did not arrive in time",
    409: "conflict",
    413: "payload too large",
    415: "unsupported media type",
    422: "rejected (callback URL or upstream)",
    429: "a limit of the tenant (jobs per second, jobs in flight); see Retry-After",
    503: "store unavailable, or too many large requests in flight (overloaded)",
}


def _schemas() -> dict[str, Any]:
    delivery = {
        "type": "object",
        "required": ["state", "attempts", "last_status_code", "last_attempt_at", "next_attempt_at"],
        "properties": {
            "state": {"enum": [s.value for s in DeliveryState]},
            "attempts": {"type": "integer", "minimum": 0},
            "last_status_code": {"type": ["integer", "null"]},
            "last_attempt_at": TS,
            "next_attempt_at": TS,
        },
    }
    error = {
        "type": ["object", "null"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "upstream_status": {"type": ["integer", "null"]},
        },
    }
    job = {
        "type": "object",
        "required": [
            "id",
            "status",
            "upstream",
            "upstream_id",
            "callback_url",
            "metadata",
            "created_at",
            "updated_at",
            "completed_at",
            "result",
            "result_url",
            "error",
            "delivery",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^job_[0-9a-f]{27}$"},
            "status": {"enum": [s.value for s in JobStatus]},
            "upstream": {"type": "string"},
            "upstream_id": {"type": ["string", "null"]},
            "callback_url": {"type": ["string", "null"]},
            "metadata": {"type": ["object", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "completed_at": TS,
            "result": {},
            "result_url": {"type": ["string", "null"]},
            "error": error,
            "delivery": delivery,
        },
    }
    attempt = {
        "type": "object",
        "required": ["at", "status_code", "duration_ms", "error", "response_excerpt"],
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "status_code": {"type": ["integer", "null"]},
            "duration_ms": {"type": "integer"},
            "error": {"type": ["string", "null"]},
            "response_excerpt": {"type": "string", "maxLength": 1024},
        },
    }
    problem = {
        "type": "object",
        "required": ["type", "code", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "code": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
    }
    attempts = {
        "type": "object",
        "required": ["job_id", "attempts"],
        "properties": {
            "job_id": {"type": "string"},
            "attempts": {"type": "array", "items": _ref("Attempt")},
        },
    }
    event = {
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"enum": ["job.completed", "job.failed"]},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": _ref("Job"),
        },
    }
    problem_type = {
        "type": "object",
        "required": ["type", "code", "title", "description"],
        "properties": {
            "type": {"type": "string"},
            "code": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
        },
    }
    job_list = {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {
                "type": "array",
                "items": _ref("Job"),
                "description": "newest first; `result` is not included (see GET "
                "/v1/jobs/{job_id}); a page may hold fewer than `limit` jobs and still have "
                "a next_cursor when filters had to be checked job by job",
            },
            "next_cursor": {
                "type": ["string", "null"],
                "description": "the `cursor` of the next page; null on the last page",
            },
        },
    }
    return {
        "JobRequest": _job_request(),
        "JobList": job_list,
        "JsonValue": _json_value(),
        "Job": job,
        "Attempt": attempt,
        "Attempts": attempts,
        "Problem": problem,
        "ProblemType": problem_type,
        "WebhookEvent": event,
    }


def _json_value() -> dict[str, Any]:
    """Any JSON value whose integers fit in 64 bits (orjson cannot keep larger ones)."""
    value = _ref("JsonValue")
    return {
        "description": f"any JSON value; integers in [{INT64_MIN}, {UINT64_MAX}], "
        f"arrays and objects nested at most {MAX_INPUT_DEPTH} levels",
        "anyOf": [
            {"type": ["null", "boolean", "string"]},
            {"type": "integer", "minimum": INT64_MIN, "maximum": UINT64_MAX},
            {"type": "number", "not": {"type": "integer"}},
            {"type": "array", "items": value},
            {"type": "object", "additionalProperties": value},
        ],
    }


def _job_request() -> dict[str, Any]:
    inputs = {"type": "object", "additionalProperties": _ref("JsonValue")}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(JOB_FIELDS[:2]),
        "properties": {
            "upstream": {"type": "string", "minLength": 1, "maxLength": MAX_UPSTREAM_CHARS},
            "inputs": {**inputs, "description": "sent to the upstream as they are"},
            "callback_url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                "description": "where the signed event is POSTed; without it the job is only "
                "read back (GET /v1/jobs/{id}, ?wait=N, or Prefer: wait=N on this request)",
            },
            "metadata": {
                "anyOf": [inputs, {"type": "null"}],
                "description": f"echoed in the callback; at most {MAX_METADATA_BYTES} bytes",
            },
        },
    }


def _header(name: str, description: str, pattern: str) -> dict[str, Any]:
    schema = {"type": "string", "pattern": pattern}
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _webhook(event_type: str, summary: str) -> dict[str, Any]:
    """The callback POSTed to a job's callback_url (CONTRACT §4), as an OpenAPI webhook."""
    return {
        "post": {
            "summary": summary,
            "description": (
                f"`type` is `{event_type}`. Signed with Standard Webhooks: verify "
                "`webhook-signature` over `{webhook-id}.{webhook-timestamp}.{body}` with "
                "the tenant's `whsec_` secret (any Standard Webhooks library does). The "
                "same `webhook-id` on every attempt and redelivery of this event."
            ),
            "parameters": [
                _header("webhook-id", "the event's id, the same for every attempt", "^msg_"),
                _header("webhook-timestamp", "Unix seconds of this attempt", "^[0-9]+$"),
                _header(
                    "webhook-signature",
                    "`v1,<base64 HMAC-SHA256>`, space-separated, one per secret",
                    "^v1,",
                ),
            ],
            "requestBody": {"required": True, "content": _json_content("WebhookEvent")},
            "responses": {
                "2XX": {"description": "delivered; no further attempt"},
                "410": {"description": "gone: delivery stops at once (state failed)"},
                "429": {"description": "retried, no sooner than Retry-After (at most 1 h)"},
                "503": {"description": "retried, no sooner than Retry-After (at most 1 h)"},
                "default": {
                    "description": "any other status, a redirect, a timeout: retried on the "
                    "schedule (callbacks.retry_schedule_s)"
                },
            },
        }
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(name: str | None) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name) if name else {}}}


def _op(summary: str, ok: dict[int, str | None], errors: list[int], **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(code): {"description": summary, "content": _json_content(schema)}
        for code, schema in ok.items()
    }
    for code in errors:
        responses[str(code)] = {
            "description": PROBLEM_CODES[code],
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
    return {"summary": summary, "responses": responses, **extra}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (RFC 7240, N seconds, at most 60): answer once the job is "
    "terminal (200, result inline) or after N seconds (202); `Preference-Applied` says "
    "when it was applied (not when this process already holds its most waiting requests)",
    "schema": {"type": "string"},
}
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "answer once the job is terminal, or after this many seconds",
    "schema": {"type": "integer", "minimum": 0, "maximum": 60},
}


def _push_path() -> dict[str, Any]:
    names = ("upstream", "job_id", "mac")
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]
    problem = {"application/problem+json": {"schema": _ref("Problem")}}
    return {
        "post": {
            "summary": "A provider's push for a job (the URL pushbridge gave it; no API key)",
            "description": "Makes the job due now; the result is what the provider answers "
            "to pushbridge's own request. The body is only read to check a signature.",
            "parameters": params,
            "responses": {
                "200": {"description": "taken (whatever the job's state; an empty body)"},
                "401": {"description": "the provider's signature is not valid", "content": problem},
                "404": {"description": "no such push URL", "content": problem},
                "408": {"description": PROBLEM_CODES[408], "content": problem},
                "413": {"description": PROBLEM_CODES[413], "content": problem},
                "503": {"description": PROBLEM_CODES[503], "content": problem},
            },
        }
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _list_parameters() -> list[dict[str, Any]]:
    def states(values: list[str]) -> dict[str, Any]:
        one = "|".join(values)
        return {"type": "string", "pattern": f"^({one})(,({one}))*$"}

    return [
        _query(
            "status", "comma-separated statuses: any of them", states([s.value for s in JobStatus])
        ),
        _query(
            "delivery",
            "comma-separated delivery states: any of them (`failed`: failed deliveries)",
            states([s.value for s in DeliveryState]),
        ),
        _query(
            "upstream",
            "the upstream's name",
            {"type": "string", "minLength": 1, "maxLength": MAX_UPSTREAM_CHARS},
        ),
        _query(
            "limit",
            "jobs per page",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
        ),
        _query(
            "cursor",
            "`next_cursor` of the previous page: the creation time (13 digits of ms) and id "
            "(hex digits) of the job the page starts below",
            {"type": "string", "pattern": CURSOR_PATTERN},
        ),
    ]


def openapi_spec() -> dict[str, Any]:
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
    }
    job_ops = [401, 404, 503]
    paths = {
        "/v1/jobs": {
            "get": _op(
                "The tenant's jobs, newest first, a page at a time",
                {200: "JobList"},
                [400, 401, 503],
                security=auth,
                parameters=_list_parameters(),
            ),
            "post": _op(
                "Create a job",
                {202: "Job", 200: "Job"},
                [400, 401, 404, 408, 409, 413, 415, 422, 429, 503],
                security=auth,
                parameters=[idem, PREFER],
                requestBody={"required": True, "content": _json_content("JobRequest")},
            ),
        },
        "/v1/jobs/{job_id}": {
            "get": _op(
                "Get a job",
                {200: "Job"},
                [400, *job_ops],
                security=auth,
                parameters=[JOB_ID, WAIT],
            ),
            "delete": _op(
                "Cancel a job", {200: "Job"}, [*job_ops, 409], security=auth, parameters=[JOB_ID]
            ),
        },
        "/v1/jobs/{job_id}/attempts": {
            "get": _op(
                "Delivery attempts, oldest first",
                {200: "Attempts"},
                job_ops,
                security=auth,
                parameters=[JOB_ID],
            )
        },
        "/v1/jobs/{job_id}/redeliver": {
            "post": _op(
                "Deliver the terminal event once more",
                {202: "Job"},
                [*job_ops, 409],
                security=auth,
                parameters=[JOB_ID],
            )
        },
        "/v1/jobs/{job_id}/result": {
            "get": _op(
                "The stored result",
                {200: None},
                [*job_ops, 409],
                security=auth,
                parameters=[JOB_ID],
            )
        },
        "/v1/results/{job_id}": {
            "get": _op(
                "A result by signed link (no API key)",
                {200: None},
                [404, 503],
                parameters=[
                    JOB_ID,
                    {
                        "name": "expires",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
            )
        },
        "/v1/push/{upstream}/{job_id}/{mac}": _push_path(),
        "/healthz": {
            "get": {"summary": "Process alive", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {"get": _op("Store reachable", {200: None}, [503])},
        "/problems/{code}": {
            "get": {
                "summary": "What a problem code means (the page a problem's `type` names)",
                "parameters": [
                    {"name": "code", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "the code's description (HTML if Accept asks for it)",
                        "content": {
                            "application/json": {"schema": _ref("ProblemType")},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "404": {
                        "description": "no such problem code",
                        "content": {"application/problem+json": {"schema": _ref("Problem")}},
                    },
                },
            }
        },
        "/console": {
            "get": {
                "summary": "The operator console (a page; sign in with an API key)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/console/{asset}": {
            "get": {
                "summary": "The console's script and style sheet",
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["console.js", "console.css"]},
                    }
                ],
                "responses": {
                    "200": {"description": "the file"},
                    "404": {
                        "description": "no such file",
                        "content": {"application/problem+json": {"schema": _ref("Problem")}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
            }
        },
    }
    paths["/v1/results/{job_id}"]["get"]["responses"]["403"] = {
        "description": "invalid or expired link",
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "pushbridge", "version": __version__},
        "paths": paths,
        "webhooks": {
            "job.completed": _webhook("job.completed", "A job finished with a result"),
            "job.failed": _webhook("job.failed", "A job failed (error says why)"),
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
