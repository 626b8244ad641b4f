"""One callback attempt: checked address, Standard Webhooks headers, classified outcome."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import httpx

from bridge.config import CallbacksConfig
from bridge.delivery.hostgate import HostGates
from bridge.delivery.signing import sign_webhook
from bridge.delivery.urlpolicy import CallbackRejected, Target, UrlPolicy
from bridge.net.client import USER_AGENT, LeanClient
from bridge.net.util import describe_error, parse_retry_after, wire_url

Outcome = Literal["delivered", "retry", "gone", "deferred"]


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    status_code: int | None
    duration_ms: int
    error: str | None = None
    excerpt: str = ""
    retry_after_s: float | None = None
    quick_host: bool = False  # deferred at a host that answers quickly: retry_after_s is its turn


def webhook_headers(secrets: tuple[str, ...], msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_webhook(secrets, msg_id, ts, body),
    }


def _classify(code: int, retry_after: str | None) -> tuple[Outcome, float | None]:
    if 200 <= code < 300:
        return "delivered", None
    if code == 410:
        return "gone", None
    if code in (429, 503):
        return "retry", parse_retry_after(retry_after)
    return "retry", None


class Deliverer:
    """Posts events; `client` must not follow redirects (a 3xx is a failed attempt).

    At most `per_host_concurrency` attempts run against one address and port, whatever
    names lead there; beyond that an attempt waits briefly for a slot if the host has
    been answering quickly, else it is "deferred" at once (with a hint of when a slot
    may free), so one hanging host cannot tie up the workers that deliver to every
    other host (bridge/hostgate.py).
    """

    def __init__(self, client: LeanClient, config: CallbacksConfig, policy: UrlPolicy):
        self.client = client
        self.config = config
        self.policy = policy
        self.gates = HostGates(config.per_host_concurrency, max_hold_s=config.timeout_s)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """One attempt. Never raises (but for cancellation): whatever goes wrong is a
        failed attempt with a short, secret-free error."""
        started = time.perf_counter()
        try:
            target = await self.policy.resolve(url)
        except CallbackRejected as e:
            return Attempt("retry", None, _ms_since(started), f"callback-rejected: {e}")
        except Exception as e:  # a resolver that fails oddly: a failed attempt
            return Attempt("retry", None, _ms_since(started), describe_error(e))
        dest = (str(target.addresses[0]), target.port)
        async with self.gates.slot(dest) as got:
            if not got:  # at its cap and not worth waiting for: come back when a slot frees
                where = f"{_netloc(*dest)} ({target.host})"
                error = f"{where} is at per_host_concurrency"
                turn_s = self.gates.book_turn_s(dest)
                quick = self.gates.quick(dest)
                return Attempt("deferred", None, 0, error, retry_after_s=turn_s, quick_host=quick)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    return await self._send(url, target, body, headers, started)
            except TimeoutError:
                return Attempt("retry", None, _ms_since(started), "timeout")
            except Exception as e:  # whatever fails, the attempt is recorded
                return Attempt("retry", None, _ms_since(started), describe_error(e))

    async def _send(
        self, url: str, target: Target, body: bytes, headers: dict[str, str], started: float
    ) -> Attempt:
        sent = wire_url(url)  # as the client (aiohttp) reads it, to the checked address
        to = sent.with_host(str(target.addresses[0])).with_port(target.port)
        netloc = _netloc(target.host, sent.explicit_port if not sent.is_default_port() else None)
        response = await self.client.send_raw(
            "POST",
            to,  # read once, here
            self.config.timeout_s,
            headers={**headers, "host": netloc},
            content=body,
            extensions={"sni_hostname": target.host} if sent.scheme == "https" else {},
        )
        try:
            excerpt = await _read_excerpt(response, self.config.max_response_excerpt_bytes)
        finally:
            await response.aclose()
        outcome, retry_after_s = _classify(
            response.status_code, response.headers.get("retry-after")
        )
        error = None if outcome == "delivered" else f"receiver answered {response.status_code}"
        return Attempt(
            outcome, response.status_code, _ms_since(started), error, excerpt, retry_after_s
        )


def _netloc(host: str, port: int | None) -> str:
    """host[:port] for a Host header; an IPv6 literal in brackets."""
    bracketed = f"[{host}]" if ":" in host else host
    return bracketed if port is None else f"{bracketed}:{port}"


async def _read_excerpt(response: httpx.Response, limit_bytes: int) -> str:
    buf = b""
    async for chunk in response.aiter_raw():
        buf += chunk
        if len(buf) >= limit_bytes:
            break
    return buf[:limit_bytes].decode("utf-8", errors="replace")


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
