"""The bridge's HTTP clients: httpx over aiohttp's pool, hot-path requests straight
to aiohttp (httpx's types and errors on the way out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from bridge import __version__
from bridge.net.util import BodyTooLarge, origin, wire_url

USER_AGENT = f"pushbridge/{__version__}"
# what a request may carry to an origin it was redirected to (credentials never)
GENERIC_HEADERS = frozenset(
    {"host", "user-agent", "accept", "accept-encoding", "content-type", "content-length"}
)


class LeanClient(httpx.AsyncClient):
    """`httpx.AsyncClient` plus `send_raw`, which hands an `httpx.Request` straight to
    the transport. It skips the client layers the bridge does not use on its hot paths
    (cookie jar, auth flows, event hooks, default-header merging), which cost about as
    much CPU as the request itself over aiohttp's pool (bench/RESULTS.md). Requests,
    responses, timeouts and errors are httpx's. A redirect, when this client follows
    them, is followed through the full client (from the answer: nothing is sent twice)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        self.lean_transport = transport or httpx.AsyncHTTPTransport()
        super().__init__(transport=self.lean_transport, **kwargs)

    def _redirect_headers(
        self, request: httpx.Request, url: httpx.URL, method: str
    ) -> httpx.Headers:
        """httpx's, and a redirect to another origin carries none of the request's own
        headers but the generic ones: httpx drops only Authorization, while providers put
        their keys in others too (x-goog-api-key, a custom adapter's header)."""
        headers = super()._redirect_headers(request, url, method)
        if origin(str(url)) != origin(str(request.url)):
            for name in [n for n in headers if n.lower() not in GENERIC_HEADERS]:
                del headers[name]
        return headers

    async def send_raw(
        self,
        method: str,
        url: str | httpx.URL | yarl.URL,
        timeout_s: float,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send and return the response unread (stream it, then `aclose()` it). A yarl.URL
        is one already read as it goes on the wire (net.util.wire_url): not read again."""
        headers = {"user-agent": USER_AGENT, **(headers or {})}
        transport = self.lean_transport
        if isinstance(transport, _Transport):  # no httpx.Request: straight to aiohttp
            sni = (extensions or {}).get("sni_hostname")
            direct = url if isinstance(url, yarl.URL) else str(url)
            response = await transport.send_direct(
                method, direct, timeout_s, headers, content, sni
            )
        else:
            response = await transport.handle_async_request(
                _request(method, _httpx_url(url), timeout_s, headers, content, extensions)
            )
        if response.is_redirect and self.follow_redirects:
            await response.aclose()
            request = _request(method, _httpx_url(url), timeout_s, headers, content, extensions)
            # follow this answer, not ask again: a redirected POST (a submit) goes once
            redirect = self._build_redirect_request(request, response)
            return await self.send(redirect, stream=True)
        return response


def _httpx_url(url: str | httpx.URL | yarl.URL) -> str | httpx.URL:
    return str(url) if isinstance(url, yarl.URL) else url


def _request(
    method: str,
    url: str | httpx.URL,
    timeout_s: float,
    headers: dict[str, str],
    content: bytes | None,
    extensions: dict[str, Any] | None,
) -> httpx.Request:
    timeout = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    return httpx.Request(
        method,
        url,
        headers=headers,
        content=content,
        extensions={"timeout": timeout, **(extensions or {})},
    )


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


def plain_error(exc: Exception, request: httpx.Request | None) -> httpx.TransportError:
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

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request | _Sent) -> None:
        self.inner = inner
        self.request = request

    def _error(self, e: Exception) -> httpx.TransportError:
        sent = self.request
        return plain_error(e, sent if isinstance(sent, httpx.Request) else sent.as_request())

    async def __aiter__(self) -> AsyncIterator[bytes]:
        error = None
        try:
            async for chunk in self.inner:
                yield chunk
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = self._error(e)
        if error is not None:
            raise error  # outside the except block: no __context__ to the original

    async def aclose(self) -> None:
        error = None
        try:
            await self.inner.aclose()
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = self._error(e)
        if error is not None:
            raise error


class _Sent:
    """What was sent by `send_direct`: an `httpx.Request` is made of it only when one is
    asked for (an error to report, `response.request`), as building one costs about as
    much CPU as aiohttp's whole request."""

    __slots__ = ("method", "url")

    def __init__(self, method: str, url: str | yarl.URL) -> None:
        self.method = method
        self.url = url

    def as_request(self) -> httpx.Request | None:
        try:
            return httpx.Request(self.method, str(self.url))
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError):
            return None  # a URL httpx cannot read: the error has no request


class _DirectResponse(httpx.Response):
    """An httpx.Response of a request sent straight to aiohttp: its `request` is made when
    first asked for, and `capped_body` reads the body from aiohttp without httpx's
    stream layers."""

    _sent: _Sent | None = None
    _aio: aiohttp.ClientResponse | None = None

    async def capped_body(self, limit_bytes: int) -> bytes | None:
        """The body, refusing more than limit_bytes (BodyTooLarge); None when it must be
        decoded (a Content-Encoding): then read it through httpx, which decodes it."""
        if self._aio is None or self.headers.get("content-encoding", "identity") != "identity":
            return None
        content, chunks, size = self._aio.content, [], 0
        error = None
        try:
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit_bytes:
                    raise BodyTooLarge(limit_bytes)
                chunks.append(chunk)
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = plain_error(e, self._sent.as_request() if self._sent else None)
        if error is not None:
            raise error  # outside the except block: no __context__ to the original
        return b"".join(chunks)

    @property
    def request(self) -> httpx.Request:
        if self._request is None and self._sent is not None:
            self._request = self._sent.as_request()
        if self._request is None:
            raise RuntimeError("The request instance has not been set on this response.")
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


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

    def session(self) -> aiohttp.ClientSession:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        return self.client

    EXTENSIONS: ClassVar[dict[str, Any]] = {"http_version": b"HTTP/1.1"}

    async def send_direct(
        self,
        method: str,
        url: str | yarl.URL,
        timeout_s: float,
        headers: dict[str, str],
        content: bytes | None,
        sni_hostname: str | None = None,
    ) -> httpx.Response:
        """What `handle_async_request` does, without an httpx.Request (its URL and header
        parsing cost as much CPU as aiohttp's request): the same aiohttp call, the same
        httpx.Response, the same errors."""
        sent = _Sent(method, url)
        try:
            response = await self.session().request(
                method,
                _wire_url(url),
                headers=headers,
                data=content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout_s, sock_read=timeout_s, connect=timeout_s
                ),
                server_hostname=sni_hostname,
            )
        except (aiohttp.ClientError, httpx.TransportError) as e:
            error = plain_error(e, sent.as_request())
        else:
            stream = _PlainErrors(AiohttpResponseStream(response), sent)
            extensions = self.EXTENSIONS
            if response.reason:
                extensions = {**extensions, "reason_phrase": response.reason.encode()}
            out = _DirectResponse(
                response.status,
                headers=response.raw_headers,
                stream=stream,
                extensions=extensions,
            )
            out._sent, out._aio = sent, response
            return out
        raise error  # outside the except block: no __context__ to the original


def _wire_url(url: str | yarl.URL) -> yarl.URL:
    """wire_url (a yarl.URL is one already read), failing as aiohttp fails on a URL it
    cannot read (a ClientError)."""
    if isinstance(url, yarl.URL):
        return url
    try:
        sent = wire_url(url)
        _ = sent.port  # read now: an encoded URL's port is checked only when read
    except (ValueError, TypeError) as e:
        raise aiohttp.InvalidURL(url) from e
    return sent


def _transport(max_connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=30)
    return _Transport(limits=limits)


def upstream_client() -> LeanClient:
    return LeanClient(transport=_transport(512), follow_redirects=True, max_redirects=5)


def callback_client() -> LeanClient:
    return LeanClient(transport=_transport(1024), follow_redirects=False)
