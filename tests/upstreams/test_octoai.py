"""The octoai upstream client: httpx.MockTransport for every answer shape, then the
contract suite against the octoai emulator, and where its token may go."""

from __future__ import annotations

import httpx
import pytest

from bridge.config import OctoAIUpstreamConfig
from bridge.net.client import LeanClient
from bridge.upstreams.base import (
    Done,
    Expired,
    Failed,
    Healthy,
    Rejected,
    Running,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.octoai import OctoAIUpstream

URL = "http://up.test/infer/m"
KIND = {  # the outcome kinds of the old single Outcome type, as the per-call types
    "accepted": Submitted,
    "rejected": Rejected,
    "transient": Transient,
    "pending": Running,
    "completed": Done,
    "failed": Failed,
    "expired": Expired,
}


def upstream(handler, **cfg) -> OctoAIUpstream:
    client = LeanClient(transport=httpx.MockTransport(handler))
    config = OctoAIUpstreamConfig(url=URL, health_url="http://up.test/healthz", **cfg)
    return OctoAIUpstream("m", config, "tok-123", client, max_result_bytes=1000)


def poll_ref(url: str) -> UpstreamRef:
    return UpstreamRef("r", {"poll_url": url})


def result_ref(url: str) -> UpstreamRef:
    return UpstreamRef("r", {"response_url": url})


def answer(status: int, body: bytes | str = b"", headers: dict | None = None):
    content = body.encode() if isinstance(body, str) else body

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return handler


async def test_submit_sends_protocol_headers_and_parses_future():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        seen["body"] = request.content
        return httpx.Response(202, json={"response_id": "r1", "poll_url": "/futures/r1"})

    out = await upstream(handler).submit({"a": 1})
    assert isinstance(out, Submitted) and out.ref.id == "r1"
    assert out.ref.data["poll_url"] == "http://up.test/futures/r1"  # relative poll_url resolved
    assert seen["authorization"] == "Bearer tok-123"
    assert seen["x-octoai-async"] == "1"
    assert seen["content-type"] == "application/json"
    assert seen["body"] == b'{"a":1}'


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "retry_after"),
    [
        (503, "down", None, "transient", None),
        (429, "slow down", {"retry-after": "7"}, "transient", 7.0),
        (500, "", {"retry-after": "99999"}, "transient", 3600.0),
        (400, "bad inputs", None, "rejected", None),
        (401, "no", None, "rejected", None),
        (200, "{not json", None, "transient", None),
        (200, '{"response_id": "x"}', None, "transient", None),
    ],
)
async def test_submit_classification(status, body, headers, kind, retry_after):
    out = await upstream(answer(status, body, headers)).submit({})
    assert isinstance(out, KIND[kind])
    assert getattr(out, "retry_after_s", None) == retry_after
    if kind == "rejected":
        assert out.status_code == status and body in out.message


@pytest.mark.parametrize(
    ("exc", "fragment"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connect error"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "Name or service"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.RemoteProtocolError("peer closed"), "RemoteProtocolError"),
    ],
)
async def test_transport_errors_are_transient(exc, fragment):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    up = upstream(handler)
    for out in (
        await up.submit({}),
        await up.poll(poll_ref("http://up.test/f")),
        await up.fetch_result(result_ref("http://up.test/r")),
    ):
        assert isinstance(out, Transient) and fragment in out.reason
    health = await up.health()
    assert isinstance(health, Transient) and fragment in health.reason


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, '{"status": "pending"}', "pending"),
        (200, '{"status": "running", "response_url": null}', "pending"),
        (200, '{"status": "something-new"}', "pending"),
        (200, '{"status": "completed", "response_url": "/r/1"}', "completed"),
        (200, '{"status": "completed"}', "transient"),
        (200, '{"status": "failed", "error": "oom"}', "failed"),
        (200, '{"status": "cancelled"}', "failed"),
        (200, "<html>", "transient"),
        (200, "[1, 2]", "transient"),
        (404, "", "expired"),
        (502, "", "transient"),
        (403, "forbidden", "failed"),
    ],
)
async def test_poll_classification(status, body, kind):
    out = await upstream(answer(status, body)).poll(poll_ref("http://up.test/futures/1"))
    assert isinstance(out, KIND[kind])
    if kind == "completed":
        assert out.fetch_ref.data["response_url"] == "http://up.test/r/1"
    if kind == "failed" and status == 200:
        assert out.message in ("oom", "cancelled")


async def test_fetch_result_limits_and_errors():
    r = result_ref("http://u/r")
    assert (await upstream(answer(200, '{"r": 1}')).fetch_result(r)).result == b'{"r": 1}'
    huge = await upstream(answer(200, b'"' + b"x" * 5000 + b'"')).fetch_result(r)
    assert isinstance(huge, Failed) and "exceeds 1000 bytes" in huge.message
    assert isinstance(await upstream(answer(404)).fetch_result(r), Expired)
    assert isinstance(await upstream(answer(200, "not json")).fetch_result(r), Transient)


async def test_redirects_are_followed_for_upstreams():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(307, headers={"location": "http://up.test/new"})
        return httpx.Response(200, json={"status": "running"})

    client = LeanClient(transport=httpx.MockTransport(handler), follow_redirects=True)
    up = OctoAIUpstream("m", OctoAIUpstreamConfig(url=URL), None, client)
    assert isinstance(await up.poll(poll_ref("http://up.test/old")), Running)


async def test_health_and_token_not_in_repr():
    up = upstream(answer(503))
    assert isinstance(await up.health(), Transient)
    assert (await up.health()).status_code == 503
    assert isinstance(await upstream(answer(200)).health(), Healthy)
    assert "tok-123" not in repr(up)
