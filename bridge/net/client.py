"""The bridge's HTTP clients: httpx over aiohttp's pool, hot-path requests straight
to the transport."""

from __future__ import annotations

import asyncio
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


class _Transport(AiohttpTransport):
    """httpx's API over aiohttp's connection pool: ~5x less CPU per request than
    httpcore's pool under concurrency (measured in bench/, see bench/RESULTS.md).

    httpx-aiohttp 0.2 maps a refused connection or a failed DNS lookup
    (aiohttp's ClientConnectorError) to httpx.ConnectTimeout; it is a ConnectError. It
    leaves other aiohttp errors (ClientResponseError: not HTTP) unmapped; they are
    RemoteProtocolErrors."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as e:
            cause = e.__cause__
            if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(
                cause, asyncio.TimeoutError
            ):
                raise httpx.ConnectError(str(e), request=request) from cause
            raise
        except aiohttp.ClientError as e:  # not mapped by httpx-aiohttp: an answer that is not
            # HTTP, a header line over 8 KiB. Without its repr, which holds the request headers.
            message = getattr(e, "message", "") or str(e)
            raise httpx.RemoteProtocolError(
                f"{type(e).__name__}: {message}"[:300], request=request
            ) from None


def _transport(max_connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=30)
    return _Transport(limits=limits)


def upstream_client() -> LeanClient:
    return LeanClient(transport=_transport(512), follow_redirects=True, max_redirects=5)


def callback_client() -> LeanClient:
    return LeanClient(transport=_transport(1024), follow_redirects=False)
