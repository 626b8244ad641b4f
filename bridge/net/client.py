"""The bridge's HTTP clients: httpx over aiohttp's pool, hot-path requests straight
to the transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from bridge import __version__

USER_AGENT = f"pushbridge/{__version__}"


class LeanClient(httpx.AsyncClient):
    """`httpx.AsyncClient` plus `send_lean`, which hands an `httpx.Request` straight to
    the transport. It skips the client layers the bridge does not use on its hot paths
    (cookie jar, auth flows, event hooks, default-header merging), which cost about as
    much CPU as the request itself over aiohttp's pool (bench/RESULTS.md). Requests,
    responses, timeouts and errors are httpx's. A redirect, when this client follows
    them, is sent again through the full client, which follows it."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.lean_transport = transport or httpx.AsyncHTTPTransport()
        super().__init__(transport=self.lean_transport, **kwargs)

    async def send_lean(
        self,
        method: str,
        url: str | httpx.URL,
        timeout_s: float,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send and return the response unread (stream it, then `aclose()` it)."""
        timeout = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
        request = httpx.Request(
            method,
            url,
            headers={"user-agent": USER_AGENT, **(headers or {})},
            content=content,
            extensions={"timeout": timeout, **(extensions or {})},
        )
        response = await self.lean_transport.handle_async_request(request)
        if response.is_redirect and self.follow_redirects:
            await response.aclose()
            return await self.send(request, stream=True)
        return response


# aiohttp's errors as httpx's, most specific first
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientConnectionError, httpx.NetworkError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
)


def plain_error(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """An httpx error for an aiohttp one (or for httpx-aiohttp's mapping of one), made
    afresh: no cause nor context, so it never carries aiohttp's RequestInfo, which holds
    the request's headers (Authorization included). A response that is not HTTP (bytes
    that are not a status line, a header line over 8190 bytes) is a RemoteProtocolError."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if not isinstance(cause, aiohttp.ClientError):
        kind = type(exc) if isinstance(exc, httpx.TransportError) else httpx.TransportError
        return kind(str(exc)[:300], request=request)
    kind = next((to for frm, to in _ERRORS if isinstance(cause, frm)), httpx.TransportError)
    if isinstance(cause, aiohttp.ClientResponseError):
        # its message quotes the bytes received (which may echo the request): keep the gist
        return kind(f"invalid HTTP response: {cause.message.split(':')[0][:200]}", request=request)
    return kind(str(cause)[:300], request=request)


class _PlainErrors(httpx.AsyncByteStream):
    """A response body stream whose errors are `plain_error`s."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self.inner = inner
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        error = None
        try:
            async for chunk in self.inner:
                yield chunk
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = plain_error(e, self.request)
        if error is not None:
            raise error  # outside the except block: no __context__ to the original

    async def aclose(self) -> None:
        error = None
        try:
            await self.inner.aclose()
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = plain_error(e, self.request)
        if error is not None:
            raise error


class _Transport(AiohttpTransport):
    """httpx's API over aiohttp's connection pool: ~5x less CPU per request than
    httpcore's pool under concurrency (measured in bench/, see bench/RESULTS.md).

    Every error is an httpx.TransportError from `plain_error`: httpx-aiohttp 0.2 lets
    some aiohttp errors through (ClientResponseError for a response that is not HTTP),
    maps a refused connection to ConnectTimeout, and chains the aiohttp error, whose
    RequestInfo holds the request headers."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = plain_error(e, request)
        else:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _PlainErrors(response.stream, request)
            return response
        raise error  # outside the except block: no __context__ to the original


def _transport(max_connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=30)
    return _Transport(limits=limits)


def upstream_client() -> LeanClient:
    return LeanClient(transport=_transport(512), follow_redirects=True, max_redirects=5)


def callback_client() -> LeanClient:
    return LeanClient(transport=_transport(1024), follow_redirects=False)
