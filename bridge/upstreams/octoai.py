"""The `octoai` upstream protocol (CONTRACT §5): submit, poll, fetch result, health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
import orjson

from bridge.config import UpstreamConfig
from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, describe_error, excerpt, parse_retry_after, read_capped

Kind = Literal["accepted", "pending", "completed", "failed", "expired", "transient", "rejected"]
PENDING_STATUSES = frozenset({"pending", "running", "queued", "in_progress", "starting"})
FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled"})
MAX_CONTROL_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    status_code: int | None = None
    detail: str = ""
    retry_after_s: float | None = None
    upstream_id: str | None = None
    url: str | None = None  # poll_url after submit, response_url after a completed poll
    body: bytes | None = None  # the result, after fetch


def _transient(detail: str, response: httpx.Response | None = None) -> Outcome:
    if response is None:
        return Outcome("transient", detail=detail)
    return Outcome(
        "transient",
        status_code=response.status_code,
        detail=detail,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def _is_transient_status(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def _non_2xx(response: httpx.Response, body: bytes, what: str) -> Outcome | None:
    """The outcome of a poll or result fetch that did not answer 2xx (None if it did)."""
    code = response.status_code
    if code == 404:
        return Outcome("expired", status_code=code, detail=f"upstream {what} not found")
    if _is_transient_status(code):
        return _transient(f"upstream answered {code}", response)
    if not 200 <= code < 300:
        return Outcome("failed", status_code=code, detail=excerpt(body, 512))
    return None


class OctoAIUpstream:
    """One configured upstream speaking the octoai protocol; `client` is shared and passed in."""

    protocol = "octoai"

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.max_result_bytes = max_result_bytes
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:  # never show the token
        return f"OctoAIUpstream({self.name!r}, {self.config.url!r})"

    async def _request(
        self, method: str, url: str, timeout_s: float, limit_bytes: int, **kw: Any
    ) -> tuple[httpx.Response, bytes]:
        headers = {**self._headers, **kw.pop("headers", {})}
        response = await self.client.send_lean(method, url, timeout_s, headers, **kw)
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        return response, body

    async def submit(self, inputs: Any) -> Outcome:
        content = orjson.dumps(inputs)
        headers = {"X-OctoAI-Async": "1", "Content-Type": "application/json"}
        try:
            response, body = await self._request(
                "POST",
                self.config.url,
                self.config.submit_timeout_s,
                MAX_CONTROL_BODY_BYTES,
                content=content,
                headers=headers,
            )
        except (httpx.HTTPError, BodyTooLarge) as e:
            return _transient(describe_error(e))
        return self._submit_outcome(response, body)

    def _submit_outcome(self, response: httpx.Response, body: bytes) -> Outcome:
        code = response.status_code
        if _is_transient_status(code):
            return _transient(f"upstream answered {code}", response)
        if not 200 <= code < 300:
            return Outcome("rejected", status_code=code, detail=excerpt(body, 512))
        try:
            data = orjson.loads(body)
            response_id, poll_url = str(data["response_id"]), str(data["poll_url"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _transient(f"malformed submit response ({code}): {excerpt(body, 200)}", response)
        return Outcome(
            "accepted",
            status_code=code,
            upstream_id=response_id,
            url=urljoin(self.config.url, poll_url),
        )

    async def poll(self, poll_url: str) -> Outcome:
        try:
            response, body = await self._request(
                "GET", poll_url, self.config.poll.timeout_s, MAX_CONTROL_BODY_BYTES
            )
        except (httpx.HTTPError, BodyTooLarge) as e:
            return _transient(describe_error(e))
        return self._poll_outcome(poll_url, response, body)

    def _poll_outcome(self, poll_url: str, response: httpx.Response, body: bytes) -> Outcome:
        code = response.status_code
        if failure := _non_2xx(response, body, "future"):
            return failure
        try:
            data = orjson.loads(body)
            status = str(data.get("status", "")).lower()
        except (orjson.JSONDecodeError, AttributeError):
            return _transient(f"malformed poll response: {excerpt(body, 200)}", response)
        if status == "completed":
            response_url = data.get("response_url")
            if not response_url:
                return _transient("completed without response_url", response)
            return Outcome("completed", status_code=code, url=urljoin(poll_url, response_url))
        if status in FAILED_STATUSES:
            detail = data.get("error") or data.get("detail") or data.get("message") or status
            return Outcome("failed", status_code=code, detail=str(detail)[:1000])
        return Outcome("pending", status_code=code, detail=status)

    async def fetch_result(self, response_url: str) -> Outcome:
        try:
            response, body = await self._request(
                "GET", response_url, self.config.poll.timeout_s, self.max_result_bytes
            )
        except BodyTooLarge as e:
            return Outcome("failed", detail=str(e))
        except httpx.HTTPError as e:
            return _transient(describe_error(e))
        if failure := _non_2xx(response, body, "result"):
            return failure
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return _transient(f"malformed result: {excerpt(body, 200)}", response)
        return Outcome("completed", status_code=response.status_code, body=body)

    async def health(self) -> Outcome:
        """kind "completed" when healthy. Without a health_url the upstream counts as healthy."""
        if not self.config.health_url:
            return Outcome("completed", detail="no health_url")
        try:
            response, _ = await self._request(
                "GET", self.config.health_url, self.config.submit_timeout_s, 64 * 1024
            )
        except (httpx.HTTPError, BodyTooLarge) as e:
            return _transient(describe_error(e))
        code = response.status_code
        kind: Kind = "completed" if code == 200 else "transient"
        return Outcome(kind, status_code=code, detail=f"health answered {code}")
