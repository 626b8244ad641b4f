"""RFC 9457 problem details: the one error shape of the API."""

from __future__ import annotations

import html
from typing import Any

import orjson
from starlette.responses import Response

TITLES = {
    "invalid-request": "Invalid request",
    "unauthorized": "Unauthorized",
    "not-found": "Not found",
    "unknown-upstream": "Unknown upstream",
    "method-not-allowed": "Method not allowed",
    "payload-too-large": "Payload too large",
    "unsupported-media-type": "Unsupported media type",
    "callback-rejected": "Callback URL rejected",
    "upstream-rejected": "Upstream rejected the job",
    "idempotency-conflict": "Idempotency key reused with a different body",
    "job-not-terminal": "Job is not terminal yet",
    "job-terminal": "Job is already terminal",
    "job-cancelled": "Job was cancelled",
    "no-result": "Job has no result",
    "invalid-link": "Invalid or expired link",
    "store-unavailable": "Store unavailable",
    "internal-error": "Internal error",
    "overloaded": "Too many large requests in flight",
    "request-timeout": "Request timed out",
    "header-too-large": "Request header fields too large",
}

# What each code means, for the page its `type` URI names (GET /problems/<code>).
DESCRIPTIONS = {
    "invalid-request": "The request is malformed: bad JSON, a missing or mistyped field, "
    "a value out of range (inputs and metadata nest at most 64 levels; integers must fit "
    "in 64 bits), or an HTTP request the server could not parse. `detail` names the field.",
    "unauthorized": "No API key, an unknown one, or more than one Authorization header. "
    "Send exactly one `Authorization: Bearer <api key>`.",
    "not-found": "No such job for this API key's tenant (another tenant's job is not found "
    "either), or no such path.",
    "unknown-upstream": "`upstream` names no configured upstream.",
    "method-not-allowed": "The path does not take this method; the Allow header lists those "
    "it takes.",
    "payload-too-large": "The body is larger than `listen.max_body_bytes`, or holds more JSON "
    "values (array elements and object members) than `listen.max_json_values`, or metadata "
    "exceeds 16 KiB.",
    "unsupported-media-type": "The body must be `application/json`.",
    "callback-rejected": "`callback_url` is refused; `rule` says why (scheme, plain http, a "
    "private, loopback or link-local address, unresolvable, ...).",
    "upstream-rejected": "The upstream refused the job with a 4xx; `upstream_status` and a "
    "short excerpt of its answer are given. The job is recorded as failed; no callback.",
    "idempotency-conflict": "This Idempotency-Key was used with a different body.",
    "job-not-terminal": "The job has not finished yet: nothing to redeliver or return.",
    "job-terminal": "The job has already finished; it cannot be cancelled.",
    "job-cancelled": "The job was cancelled; a cancelled job has no event to deliver or redeliver.",
    "no-result": "The job finished without a result.",
    "invalid-link": "The signed result link is malformed, altered or expired.",
    "store-unavailable": "The store cannot be reached; nothing was accepted. Retry after "
    "the Retry-After delay.",
    "internal-error": "An unexpected error; it has been logged. Nothing about it is shown here.",
    "overloaded": "Too many large request bodies are being handled at once "
    "(`listen.body_memory_bytes`); nothing was accepted. Retry after the Retry-After delay.",
    "request-timeout": "The request's headers (`listen.header_timeout_s`) or body "
    "(`listen.body_timeout_s`) did not arrive in time; the connection is closed.",
    "header-too-large": "The request line and headers exceed `listen.max_header_bytes`; the "
    "connection is closed.",
}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "type": f"/problems/{self.code}",
                "code": self.code,
                "title": TITLES.get(self.code, self.code),
                "status": self.status,
                "detail": self.detail,
                **self.extra,
            }
        )

    def response(self) -> Response:
        return Response(
            self.body(),
            status_code=self.status,
            headers=self.headers,
            media_type="application/problem+json",
        )


def problem_page(code: str, as_html: bool) -> Response:
    """The page a problem's `type` URI names: what the code means (JSON, or HTML)."""
    if code not in DESCRIPTIONS:
        raise Problem(404, "not-found", f"no problem type {code!r}")
    doc = {
        "type": f"/problems/{code}",
        "code": code,
        "title": TITLES[code],
        "description": DESCRIPTIONS[code],
    }
    if not as_html:
        return Response(orjson.dumps(doc), media_type="application/json")
    title, text = html.escape(doc["title"]), html.escape(doc["description"])
    page = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        f"<h1>{title}</h1><p><code>{code}</code></p><p>{text}</p></html>"
    )
    return Response(page, media_type="text/html")
