"""Small HTTP helpers shared by the upstream client and callback delivery."""

from __future__ import annotations

import email.utils
import re
import time

import httpx
import yarl

MAX_RETRY_AFTER_S = 3600.0
DEFAULT_PORTS = {"http": 80, "https": 443}
_HEX_PAIR = re.compile("[0-9A-Fa-f]{2}")
Origin = tuple[str, str, int]


class BodyTooLarge(Exception):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"response body exceeds {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP-date), capped at one hour."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # not a date (never None since Python 3.10)
        return None
    delta = when.timestamp() - (time.time() if now_s is None else now_s)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


async def read_capped(response: httpx.Response, limit_bytes: int) -> bytes:
    """Read a streamed response body, refusing more than `limit_bytes`."""
    direct = getattr(response, "capped_body", None)  # a response of LeanClient's fast path
    if direct is not None and (body := await direct(limit_bytes)) is not None:
        return bytes(body)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def excerpt(body: bytes, limit_bytes: int = 1024) -> str:
    return body[:limit_bytes].decode("utf-8", errors="replace")


def describe_error(exc: Exception) -> str:
    """A short, secret-free description of a transport error."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({kind})"
    if isinstance(exc, httpx.ConnectError):
        return f"connect error: {exc}"[:300]
    return f"{kind}: {exc}"[:300]


def wire_url(url: str) -> yarl.URL:
    """The URL as it goes on the wire: as given when it is already validly encoded
    (printable ASCII, every % an escape), as httpx sends it, so `?sig=a%2Fb` stays
    `a%2Fb` and a signed or presigned query is not altered; else quoted by yarl."""
    return yarl.URL(url, encoded=_encoded(url))


def _encoded(url: str) -> bool:
    if not url.isascii() or not url.isprintable() or " " in url:
        return False
    return all(_HEX_PAIR.fullmatch(part[:2]) for part in url.split("%")[1:])


def origin(url: str) -> Origin:
    """scheme, host and port of a URL: where a credential may go. Read by yarl, the parser
    of the client that sends the request (aiohttp), so the origin checked is the one
    connected to; a URL it cannot read has no origin (("", "", 0): no credential)."""
    try:
        u = yarl.URL(url)
        port = u.port
    except (ValueError, TypeError):
        return "", "", 0
    return u.scheme, u.raw_host or "", port or DEFAULT_PORTS.get(u.scheme, 0)
