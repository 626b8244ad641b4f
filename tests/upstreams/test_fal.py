"""The fal upstream: the contract suite against the fal emulator, then what is fal's own
(the request it sends, URLs taken from the submit answer, failure as COMPLETED + error,
the app's error status on the result, fal_webhook for push, where the key may go)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from bridge.api.serving import start_server
from bridge.config import FalUpstreamConfig, PollConfig
from bridge.dev.emulators.fal import RETENTION_S, create_emulator_app
from bridge.dev.receiver import Receiver
from bridge.net.client import LeanClient, upstream_client
from bridge.upstreams.base import (
    Cancelled,
    Done,
    Expired,
    Failed,
    Fetched,
    Healthy,
    Rejected,
    Running,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.fal import FalUpstream
from tests.upstreams.checks import check_verifies
from tests.upstreams.contract import (
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
    until_finished,
)
from tests.upstreams.servers import Recorder

URL = "http://fal.test/fal-ai/flux/dev"


def fal_step(method: str, path: str) -> str | None:
    """The protocol step of a request to the fal emulator."""
    parts = path.strip("/").split("/")
    if path == "/healthz":
        return "health"
    if method == "POST":
        return "submit"
    if len(parts) >= 4 and parts[2] == "requests":
        if method == "PUT" and parts[-1] == "cancel":
            return "cancel"
        return "poll" if parts[-1] == "status" else "result"
    return None


class FalProvider(EmulatedProvider):
    """The fal emulator behind a fault injector."""

    def __init__(self) -> None:
        super().__init__(create_emulator_app, fal_step, future_ttl_s=RETENTION_S)

    def upstream(self, client: LeanClient, base_url: str | None = None) -> FalUpstream:
        base = base_url or self.url
        config = FalUpstreamConfig(
            protocol="fal",
            url=f"{base}/fal-ai/flux/dev",
            health_url=f"{base}/healthz",
            submit_timeout_s=2,
            poll=PollConfig(timeout_s=2),
        )
        return FalUpstream("fal", config, TOKEN, client)

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        return result["echo"] == inputs and bool(result["images"])

    def carries_token(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Key {TOKEN}"


@pytest.fixture
async def provider() -> AsyncIterator[FalProvider]:
    async with served(FalProvider()) as p:
        yield p


class TestFalContract(UpstreamContract):
    pass


async def test_failures_carry_fals_text(provider: FalProvider):
    async with upstream_client() as client:
        up = provider.upstream(client)
        knobs = {"duration_s": 0, "outcome": "failed", "error": "CUDA out of memory"}
        failed = await up.submit(
            {"_emulate": knobs | {"error_type": "runner_error", "status_code": 422}}
        )
        assert isinstance(failed, Submitted)
        assert await until_finished(up, failed.ref) == Failed(
            "CUDA out of memory (runner_error)", 200
        )
        result = await up.fetch_result(failed.ref)  # the app's own error status
        assert result == Failed("fal answered 422: CUDA out of memory", 422)
        invalid = await up.submit([1, 2])  # refused by the app's input model
        assert isinstance(invalid, Submitted)
        assert isinstance(await until_finished(up, invalid.ref), Failed)
        slow = await up.submit({"_emulate": {"duration_s": 30}})
        assert isinstance(slow, Submitted)
        assert isinstance(await up.cancel(slow.ref), Cancelled)
        assert (await up.poll(slow.ref)).message == "Request cancelled (request_cancelled)"
        again = await up.cancel(slow.ref)
        assert isinstance(again, Rejected) and "ALREADY_COMPLETED" in again.message


async def test_large_results_are_fetched_in_time(provider: FalProvider):
    async with upstream_client() as client:
        up = provider.upstream(client)
        submitted = await up.submit({"_emulate": {"duration_s": 0, "result_bytes": 20_000}})
        assert isinstance(submitted, Submitted)
        done = await until_finished(up, submitted.ref)
        assert isinstance(done, Done) and done.result is None
        fetched = await up.fetch_result(done.fetch_ref or submitted.ref)
        assert isinstance(fetched, Fetched)
        assert len(orjson.loads(fetched.result)["padding"]) == 20_000


async def test_push_url_becomes_fal_webhook(provider: FalProvider):
    receiver = Receiver()
    hooks = await start_server(receiver.app())
    try:
        async with upstream_client() as client:
            up = provider.upstream(client)
            push = f"{hooks.url}/push/1?sig=a%2Fb"
            submitted = await up.submit({"_emulate": {"duration_s": 0.05}}, push)
            assert isinstance(submitted, Submitted)
            assert await receiver.wait_for(lambda: len(receiver.deliveries) == 1, 5)
        event = receiver.deliveries[0].event
        assert event["request_id"] == submitted.ref.id and event["status"] == "OK"
        assert receiver.deliveries[0].path == "/push/1"
    finally:
        await hooks.stop()


def _mock(handler: Any, url: str = URL) -> FalUpstream:
    client = LeanClient(transport=httpx.MockTransport(handler))
    return FalUpstream("fal", FalUpstreamConfig(protocol="fal", url=url), "tok-123", client)


SUBMITTED = {
    "request_id": "r1",
    "response_url": "http://fal.test/fal-ai/flux/requests/r1",
    "status_url": "http://fal.test/fal-ai/flux/requests/r1/status",
    "cancel_url": "http://fal.test/fal-ai/flux/requests/r1/cancel",
}


async def test_the_request_fal_gets():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUBMITTED)

    up = _mock(handler)
    out = await up.submit({"a": 1}, push_url="https://pb.example/push/x?s=1")
    assert isinstance(out, Submitted) and out.ref.id == "r1"
    assert out.ref.data == {k: v for k, v in SUBMITTED.items() if k != "request_id"}
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/fal-ai/flux/dev"
    assert request.url.params["fal_webhook"] == "https://pb.example/push/x?s=1"
    assert request.headers["authorization"] == "Key tok-123"
    assert orjson.loads(request.content) == {"a": 1}
    assert "tok-123" not in repr(up)


async def test_the_key_goes_only_to_the_configured_origin():
    """Status, result and cancel URLs naming another origin get no key."""
    other = await Recorder().start()
    try:
        other.answers["/s"] = (200, {"status": "COMPLETED", "logs": None})
        other.answers["/r"] = (200, {"ok": True})
        ref = UpstreamRef(
            "r1", {k: f"{other.url}/{k[0]}" for k in ("status_url", "response_url", "cancel_url")}
        )
        async with upstream_client() as client:
            up = FalUpstream("fal", FalUpstreamConfig(protocol="fal", url=URL), "tok-123", client)
            assert isinstance(await up.poll(ref), Done)
            assert await up.fetch_result(ref) == Fetched(b'{"ok":true}', 200)
        assert [s.headers.get("authorization") for s in other.seen] == [None, None]
    finally:
        await other.stop()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (202, {"status": "IN_QUEUE", "queue_position": 3}, Running(202, "IN_QUEUE")),
        (202, {"status": "IN_PROGRESS", "logs": None}, Running(202, "IN_PROGRESS")),
        (200, {"status": "COMPLETED", "logs": None}, Done),
        (
            200,
            {"status": "COMPLETED", "error": "Request timed out"},
            Failed("Request timed out", 200),
        ),
        (
            200,
            {"status": "COMPLETED", "error_type": "runner_disconnected"},
            Failed("runner_disconnected", 200),
        ),
        (200, {"logs": None}, Transient),
        (200, "not an object", Transient),
        (404, {"detail": "Request not found"}, Expired),
        (503, {"detail": "busy"}, Transient),
        (401, {"detail": "bad key"}, Failed("fal answered 401: bad key", 401)),
    ],
)
async def test_poll_classification(status, body, expected):
    up = _mock(lambda request: httpx.Response(status, json=body))
    out = await up.poll(UpstreamRef("r1", SUBMITTED))
    if isinstance(expected, type):
        assert isinstance(out, expected)
    else:
        assert out == expected


async def test_a_reference_without_urls_fails_without_a_request():
    up = _mock(lambda request: pytest.fail("no request expected"))
    assert isinstance(await up.poll(UpstreamRef("r1")), Failed)
    assert isinstance(await up.fetch_result(UpstreamRef("r1")), Failed)
    assert isinstance(await up.cancel(UpstreamRef("r1")), Rejected)


async def test_malformed_submit_answers_are_transient():
    for body in ({"request_id": "r1"}, {"status_url": "x"}, []):
        up = _mock(lambda request, body=body: httpx.Response(200, json=body))
        assert isinstance(await up.submit({}), Transient)


async def test_health_without_a_health_url():
    up = _mock(lambda request: pytest.fail("no request expected"))
    assert isinstance(await up.health(), Healthy)


async def test_wrong_key_is_rejected_with_a_clear_message(provider: FalProvider):
    async with upstream_client() as client:
        up = FalUpstream("fal", provider.upstream(client).config, "not-the-key", client)
        out = await up.submit(provider.inputs())
        assert isinstance(out, Rejected) and out.status_code == 401
        assert out.message == "fal refused the key (401): missing or invalid token"


async def test_check_tries_the_key_the_way_fal_takes_it(provider: FalProvider):
    """check sent the key as a Bearer in a GET of the queue URL, which fal's queue answers
    405 with or without it: a good key was never verified and a wrong one never noticed.
    It now asks for the status of a request that does not exist, with `Key <key>`."""
    async with upstream_client() as client:
        config = provider.upstream(client).config
    fal = {**config.model_dump(mode="json"), "token_env": "FAL_KEY"}
    accepted, refused = await check_verifies(fal, TOKEN, "not-the-key")
    assert "/requests/" in accepted and "404 with it, 401 without" in accepted, accepted
    assert "answers 401" in refused, refused
