"""What the JSON-over-HTTP provider protocols (openai, gemini) share: a request whose
credential goes only to the configured origins, its body read up to a cap, and how an
answer that is not a 2xx becomes an outcome (CONTRACT §5b: 404 is expired, 408/425/429/5xx
are transient with Retry-After, any other 4xx carries the provider's own error text)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, excerpt, parse_retry_after, read_capped
from bridge.upstreams.base import Expired, Failed, Rejected, Transient

MAX_CONTROL_BODY_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 1000
DEFAULT_PORTS = {"http": 80, "https": 443}
# what a request can fail with before there is an answer to classify
REQUEST_ERRORS = (httpx.HTTPError, httpx.InvalidURL, BodyTooLarge)

Origin = tuple[str, str, int]


def origin(url: str) -> Origin:
    """scheme, host and port of a URL: where a credential may go."""
    u = httpx.URL(url)
    return u.scheme, u.host, u.port or DEFAULT_PORTS.get(u.scheme, 0)


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer, read whole."""

    status_code: int
    body: bytes
    retry_after_s: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None if it is not one."""
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None


class JsonApi:
    """Requests to one provider with its credential headers, shared client passed in.
    `retry_hint` reads when to retry from a body without Retry-After (Google's RetryInfo)."""

    def __init__(
        self,
        client: LeanClient,
        auth: dict[str, str],
        configured_urls: Iterable[str | None],
        retry_hint: Callable[[bytes], float | None] | None = None,
    ) -> None:
        self.client = client
        self._auth = auth
        self._auth_origins = {origin(u) for u in configured_urls if u}
        self._retry_hint = retry_hint

    def __repr__(self) -> str:  # never show the credential
        return f"JsonApi(origins={sorted(self._auth_origins)!r})"

    async def request(
        self, method: str, url: str, timeout_s: float, limit_bytes: int, payload: Any = None
    ) -> Answer:
        """Send (a JSON body when payload is not None) and read the answer; raises one of
        REQUEST_ERRORS when there is none."""
        headers = dict(self._auth) if origin(url) in self._auth_origins else {}
        content = None
        if payload is not None:
            content = orjson.dumps(payload)
            headers["Content-Type"] = "application/json"
        response = await self.client.send_lean(method, url, timeout_s, headers, content=content)
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        if retry_after_s is None and self._retry_hint and is_transient_status(response.status_code):
            retry_after_s = self._retry_hint(body)
        return Answer(response.status_code, body, retry_after_s)


def provider_message(body: bytes) -> str:
    """The provider's error text: `error.message` (OpenAI, Google), `detail` or `message`,
    else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        inner = error.get("message") if isinstance(error, dict) else error
        for text in (inner, data.get("detail"), data.get("message")):
            if isinstance(text, str) and text:
                return text[:MAX_MESSAGE_CHARS]
    return excerpt(body, 512)


def is_transient_status(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def transient(reason: str, answer: Answer | None = None) -> Transient:
    if answer is None:
        return Transient(reason)
    return Transient(reason, answer.status_code, answer.retry_after_s)


def submit_refusal(answer: Answer) -> Rejected | Transient | None:
    """A submit that did not answer 2xx: transient or rejected with the provider's text."""
    code = answer.status_code
    if is_transient_status(code):
        return transient(f"upstream answered {code}: {provider_message(answer.body)}", answer)
    if not answer.ok:
        return Rejected(code, provider_message(answer.body))
    return None


def poll_refusal(answer: Answer, gone: str) -> Expired | Transient | Failed | None:
    """A poll that did not answer 2xx: 404 means the provider forgot the job (`gone`)."""
    code = answer.status_code
    if code == 404:
        return Expired(gone, code)
    if is_transient_status(code):
        return transient(f"upstream answered {code}: {provider_message(answer.body)}", answer)
    if not answer.ok:
        return Failed(provider_message(answer.body), code)
    return None


def cancel_refusal(answer: Answer) -> Rejected | Transient | None:
    code = answer.status_code
    if is_transient_status(code):
        return transient(f"upstream answered {code}: {provider_message(answer.body)}", answer)
    if not answer.ok:
        return Rejected(code, provider_message(answer.body))
    return None
