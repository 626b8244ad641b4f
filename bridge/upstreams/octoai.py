"""The `octoai` upstream protocol (CONTRACT §5): submit, poll, then fetch the result.

Submit answers `{response_id, poll_url}`; the job's reference keeps both. A poll that
says "completed" names a response_url: that is Done without a result, and
fetch_result gets it. No cancel, no push.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urljoin

import httpx
import orjson

from bridge.config import OctoAIUpstreamConfig
from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, describe_error, excerpt, parse_retry_after, read_capped
from bridge.upstreams.base import (
    CancelOutcome,
    Capabilities,
    Done,
    Expired,
    Failed,
    Fetched,
    FetchOutcome,
    HealthOutcome,
    Healthy,
    PollOutcome,
    Rejected,
    Running,
    SubmitOutcome,
    Submitted,
    Transient,
    UpstreamRef,
)

PENDING_STATUSES = frozenset({"pending", "running", "queued", "in_progress", "starting"})
FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled"})
MAX_CONTROL_BODY_BYTES = 1024 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
# what a request can fail with before there is an answer to classify
REQUEST_ERRORS = (httpx.HTTPError, httpx.InvalidURL, BodyTooLarge)

Origin = tuple[str, str, int]


def origin(url: str) -> Origin:
    """scheme, host and port of a URL: where a credential may go."""
    u = httpx.URL(url)
    return u.scheme, u.host, u.port or DEFAULT_PORTS.get(u.scheme, 0)


def _transient(reason: str, response: httpx.Response | None = None) -> Transient:
    if response is None:
        return Transient(reason)
    return Transient(
        reason,
        status_code=response.status_code,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def _is_transient_status(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def _non_2xx(
    response: httpx.Response, body: bytes, what: str
) -> Failed | Expired | Transient | None:
    """The outcome of a poll or result fetch that did not answer 2xx (None if it did)."""
    code = response.status_code
    if code == 404:
        return Expired(f"upstream {what} not found", code)
    if _is_transient_status(code):
        return _transient(f"upstream answered {code}", response)
    if not 200 <= code < 300:
        return Failed(excerpt(body, 512), code)
    return None


def _url_in(ref: UpstreamRef, key: str) -> str | None:
    value = ref.data.get(key)
    return value if isinstance(value, str) and value else None


class OctoAIUpstream:
    """One configured upstream speaking the octoai protocol; `client` is shared and passed in."""

    protocol: ClassVar[str] = "octoai"
    capabilities: ClassVar[Capabilities] = Capabilities(separate_fetch=True)

    def __init__(
        self,
        name: str,
        config: OctoAIUpstreamConfig,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.max_result_bytes = max_result_bytes
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        configured = [config.url, *([config.health_url] if config.health_url else [])]
        self._auth_origins = {origin(u) for u in configured}

    def __repr__(self) -> str:  # never show the token
        return f"OctoAIUpstream({self.name!r}, {self.config.url!r})"

    def _auth_for(self, url: str) -> dict[str, str]:
        """The token goes only to the configured origins, never to another origin that a
        poll_url or response_url names (a presigned storage URL, a hostile upstream)."""
        return self._auth if origin(url) in self._auth_origins else {}

    async def _request(
        self, method: str, url: str, timeout_s: float, limit_bytes: int, **kw: Any
    ) -> tuple[httpx.Response, bytes]:
        headers = {**self._auth_for(url), **kw.pop("headers", {})}
        response = await self.client.send_lean(method, url, timeout_s, headers, **kw)
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        return response, body

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
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
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        return self._submit_outcome(response, body)

    def _submit_outcome(self, response: httpx.Response, body: bytes) -> SubmitOutcome:
        code = response.status_code
        if _is_transient_status(code):
            return _transient(f"upstream answered {code}", response)
        if not 200 <= code < 300:
            return Rejected(code, excerpt(body, 512))
        try:
            data = orjson.loads(body)
            response_id, poll_url = str(data["response_id"]), str(data["poll_url"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _transient(f"malformed submit response ({code}): {excerpt(body, 200)}", response)
        poll_url = urljoin(self.config.url, poll_url)
        return Submitted(UpstreamRef(response_id, {"poll_url": poll_url}), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        poll_url = _url_in(ref, "poll_url")
        if poll_url is None:
            return Failed("the job's upstream reference has no poll_url")
        try:
            response, body = await self._request(
                "GET", poll_url, self.config.poll.timeout_s, MAX_CONTROL_BODY_BYTES
            )
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        return self._poll_outcome(ref, poll_url, response, body)

    def _poll_outcome(
        self, ref: UpstreamRef, poll_url: str, response: httpx.Response, body: bytes
    ) -> PollOutcome:
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
            fetch = UpstreamRef(ref.id, {"response_url": urljoin(poll_url, str(response_url))})
            return Done(fetch_ref=fetch, status_code=code)
        if status in FAILED_STATUSES:
            detail = data.get("error") or data.get("detail") or data.get("message") or status
            return Failed(str(detail)[:1000], code)
        return Running(code, status)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        response_url = _url_in(ref, "response_url")
        if response_url is None:
            return Failed("no response_url to fetch the result from")
        try:
            response, body = await self._request(
                "GET", response_url, self.config.poll.timeout_s, self.max_result_bytes
            )
        except BodyTooLarge as e:
            return Failed(str(e))
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        if failure := _non_2xx(response, body, "result"):
            return failure
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return _transient(f"malformed result: {excerpt(body, 200)}", response)
        return Fetched(body, response.status_code)

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        return Rejected(None, "the octoai protocol has no cancel")

    async def health(self) -> HealthOutcome:
        """Healthy when health_url answers 200. Without a health_url, always healthy."""
        if not self.config.health_url:
            return Healthy("no health_url")
        try:
            response, _ = await self._request(
                "GET", self.config.health_url, self.config.submit_timeout_s, 64 * 1024
            )
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if code == 200:
            return Healthy(f"health answered {code}", code)
        return Transient(f"health answered {code}", code)
