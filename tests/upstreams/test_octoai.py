"""The octoai upstream client: httpx.MockTransport for every answer shape, then the
contract suite against the octoai emulator, and where its token may go."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bridge.config import OctoAIUpstreamConfig, PollConfig
from bridge.dev.emulators.octoai import create_emulator_app
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
from tests.upstreams.contract import (
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
)
from tests.upstreams.servers import Recorder

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


def _octoai_step(method: str, path: str) -> str | None:
    """The protocol step of a request to the octoai emulator."""
    parts = path.strip("/").split("/")
    if method == "POST" and parts[0] == "infer":
        return "submit"
    if method == "GET" and parts[0] == "futures":
        return "result" if parts[-1] == "result" else "poll"
    return "health" if path == "/healthz" else None


class OctoAIProvider(EmulatedProvider):
    """The octoai emulator (bridge.dev.emulators.octoai) behind a fault injector."""

    def __init__(self) -> None:
        super().__init__(create_emulator_app, _octoai_step)

    def upstream(self, client: LeanClient, base_url: str | None = None) -> OctoAIUpstream:
        base = base_url or self.url
        config = OctoAIUpstreamConfig(
            url=f"{base}/infer/m",
            health_url=f"{base}/healthz",
            submit_timeout_s=2,
            poll=PollConfig(timeout_s=2),
        )
        return OctoAIUpstream("m", config, TOKEN, client)

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        return result["echo"] == inputs and bool(result["response"]["segments"])


class TestOctoAIContract(UpstreamContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[OctoAIProvider]:
        async with served(OctoAIProvider()) as p:
            yield p

    async def test_token_only_to_the_configured_origins(self, up, provider: OctoAIProvider):
        """A poll_url or response_url on another origin (presigned storage, a hostile
        upstream: FINDINGS D9) gets no token; the configured origin does."""
        other = await Recorder().start()
        try:
            other.answers["/poll/x"] = (200, {"status": "completed", "response_url": "/r/x"})
            other.answers["/r/x"] = (200, {"ok": True})
            ref = UpstreamRef("x", {"poll_url": f"{other.url}/poll/x"})
            done = await up.poll(ref)
            assert isinstance(done, Done)
            assert done.fetch_ref.data["response_url"] == f"{other.url}/r/x"
            assert (await up.fetch_result(done.fetch_ref)).result == b'{"ok":true}'
            assert [s.headers.get("authorization") for s in other.seen] == [None, None]
            assert isinstance(await up.submit(provider.inputs()), Submitted)
            assert provider.carries_token(provider.requests("submit")[-1])
            assert isinstance(await up.health(), Healthy)
            assert provider.carries_token(provider.requests("health")[-1])
        finally:
            await other.stop()
