"""RFC 9457 problem details: the one error shape of the API."""

from __future__ import annotations

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

    def response(self) -> Response:
        body = {
            "type": f"/problems/{self.code}",
            "code": self.code,
            "title": TITLES.get(self.code, self.code),
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        return Response(
            orjson.dumps(body),
            status_code=self.status,
            headers=self.headers,
            media_type="application/problem+json",
        )
