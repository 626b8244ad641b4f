"""What the JSON-over-HTTP adapters (runpod, fal) share: one request with a capped body,
credentials only for the configured origins, the provider's error text, and the
classification of HTTP statuses into the interface's outcomes."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, excerpt, parse_retry_after, read_capped
from bridge.upstreams.base import Transient

MAX_CONTROL_BODY_BYTES = 1024 * 1024  # submit, status and cancel answers without results
MAX_ERROR_CHARS = 1000
DEFAULT_PORTS = {"http": 80, "https": 443}
# what a request can fail with before there is an answer to classify
REQUEST_ERRORS = (httpx.HTTPError, httpx.InvalidURL, BodyTooLarge)
ERROR_KEYS = ("error", "detail", "message", "error_message")

Origin = tuple[str, str, int]


def origin(url: str) -> Origin:
    """scheme, host and port of a URL: where a credential may go."""
    u = httpx.URL(url)
    return u.scheme, u.host, u.port or DEFAULT_PORTS.get(u.scheme, 0)


def is_transient_status(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def transient(reason: str, response: httpx.Response | None = None) -> Transient:
    if response is None:
        return Transient(reason)
    retry_after_s = parse_retry_after(response.headers.get("retry-after"))
    return Transient(reason, status_code=response.status_code, retry_after_s=retry_after_s)


def message_of(value: Any) -> str:
    """An error value as text: a string as it is; in an object, its `error`/`detail`/
    `message`/`error_message` field (looked into the same way); anything else as JSON."""
    while isinstance(value, dict):
        inner = next((value[k] for k in ERROR_KEYS if value.get(k)), None)
        if inner is None:
            break
        value = inner
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text[:MAX_ERROR_CHARS]


def error_text(body: bytes) -> str:
    """The provider's error message in an answer (see message_of) when the body is a JSON
    object that has one, else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and any(data.get(k) for k in ERROR_KEYS):
        return message_of(data)
    return excerpt(body, MAX_ERROR_CHARS).strip() or "(empty body)"


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class Exchange:
    """Requests of one upstream: its credential goes only to the configured origins, never
    to another origin that a provider's answer names."""

    def __init__(self, client: LeanClient, auth: dict[str, str], origins: list[str]) -> None:
        self.client = client
        self._auth = auth
        self._origins = {origin(u) for u in origins}

    def auth_for(self, url: str) -> dict[str, str]:
        return self._auth if origin(url) in self._origins else {}

    async def request(
        self,
        method: str,
        url: str,
        timeout_s: float,
        limit_bytes: int = MAX_CONTROL_BODY_BYTES,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """Send, read at most limit_bytes of the answer (BodyTooLarge past that), close."""
        sent = {**self.auth_for(url), **(headers or {})}
        response = await self.client.send_lean(method, url, timeout_s, sent, content=content)
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        return response, body
