"""The runpod upstream: the contract suite against the runpod emulator, then what is RunPod's
own (the request it sends, inline output, FAILED / TIMED_OUT / CANCELLED texts, the webhook
for push, a hostile job id)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from bridge.api.serving import start_server
from bridge.config import PollConfig, RunpodUpstreamConfig
from bridge.dev.emulators.runpod import RETENTION_S, create_emulator_app
from bridge.dev.receiver import Receiver
from bridge.net.client import LeanClient, upstream_client
from bridge.upstreams.base import (
    Cancelled,
    Done,
    Expired,
    Failed,
    Fetched,
    Rejected,
    Running,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.runpod import RunpodUpstream
from tests.upstreams.checks import check_verifies
from tests.upstreams.contract import (
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
    until_finished,
)

ENDPOINT = "ep0abc123"
URL = f"http://rp.test/v2/{ENDPOINT}"
WORKER_ERROR = orjson.dumps(  # an exception in a handler, as the runpod worker reports it
    {
        "error_type": "<class 'torch.OutOfMemoryError'>",
        "error_message": "CUDA",
        "error_traceback": "…",
    }
).decode()


def runpod_step(method: str, path: str) -> str | None:
    """The protocol step of a request to the runpod emulator."""
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "v2":
        return {"run": "submit", "status": "poll", "cancel": "cancel", "health": "health"}.get(
            parts[2]
        )
    return None


class RunpodProvider(EmulatedProvider):
    """The runpod emulator behind a fault injector."""

    def __init__(self) -> None:
        super().__init__(create_emulator_app, runpod_step, future_ttl_s=RETENTION_S)

    def upstream(self, client: LeanClient, base_url: str | None = None) -> RunpodUpstream:
        config = RunpodUpstreamConfig(
            protocol="runpod",
            url=f"{base_url or self.url}/v2/{ENDPOINT}",
            submit_timeout_s=2,
            poll=PollConfig(timeout_s=2),
        )
        return RunpodUpstream("rp", config, TOKEN, client)

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        return result["echo"] == inputs and bool(result["text"])


@pytest.fixture
async def provider() -> AsyncIterator[RunpodProvider]:
    async with served(RunpodProvider()) as p:
        yield p


class TestRunpodContract(UpstreamContract):
    pass


async def test_failures_carry_runpods_text(provider: RunpodProvider):
    async with upstream_client() as client:
        up = provider.upstream(client)
        knobs = {"duration_s": 0, "outcome": "failed", "error": "CUDA out of memory"}
        failed = await up.submit({"_emulate": knobs})
        assert isinstance(failed, Submitted)
        assert await until_finished(up, failed.ref) == Failed("CUDA out of memory", 200)
        timed_out = await up.submit({"_emulate": {"duration_s": 0, "outcome": "timed_out"}})
        assert isinstance(timed_out, Submitted)
        assert (await until_finished(up, timed_out.ref)).message == "the job timed out at RunPod"
        slow = await up.submit({"_emulate": {"duration_s": 30}})
        assert isinstance(slow, Submitted)
        assert isinstance(await up.cancel(slow.ref), Cancelled)
        assert (await up.poll(slow.ref)).message == "the job was cancelled at RunPod"
        assert isinstance(await up.cancel(UpstreamRef("gone-u1")), Rejected)  # 404


async def test_done_carries_the_output_and_fetch_gets_it_again(provider: RunpodProvider):
    async with upstream_client() as client:
        up = provider.upstream(client)
        submitted = await up.submit({"n": 1, "_emulate": {"duration_s": 0}})
        assert isinstance(submitted, Submitted)
        done = await until_finished(up, submitted.ref)
        assert isinstance(done, Done) and orjson.loads(done.result)["echo"]["n"] == 1
        fetched = await up.fetch_result(submitted.ref)
        assert isinstance(fetched, Fetched) and fetched.result == done.result


async def test_push_url_becomes_runpods_webhook(provider: RunpodProvider):
    receiver = Receiver()
    hooks = await start_server(receiver.app())
    try:
        async with upstream_client() as client:
            up = provider.upstream(client)
            submitted = await up.submit({"_emulate": {"duration_s": 0.05}}, f"{hooks.url}/push/1")
            assert isinstance(submitted, Submitted)
            assert await receiver.wait_for(lambda: len(receiver.deliveries) == 1, 5)
        event = receiver.deliveries[0].event
        assert event["id"] == submitted.ref.id and event["status"] == "COMPLETED"
        assert receiver.deliveries[0].path == "/push/1"
    finally:
        await hooks.stop()


def _mock(handler: Any, **config: Any) -> RunpodUpstream:
    client = LeanClient(transport=httpx.MockTransport(handler))
    return RunpodUpstream("rp", RunpodUpstreamConfig(url=URL, **config), "tok-123", client)


async def test_the_request_runpod_gets():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "job-1-u1", "status": "IN_QUEUE"})

    up = _mock(handler, policy={"ttl": 60_000})
    out = await up.submit({"a": 1}, push_url="https://pb.example/push/x")
    assert out == Submitted(UpstreamRef("job-1-u1", {}), 200)
    (request,) = seen
    assert request.url == f"{URL}/run" and request.method == "POST"
    assert request.headers["authorization"] == "Bearer tok-123"
    assert orjson.loads(request.content) == {
        "input": {"a": 1},
        "webhook": "https://pb.example/push/x",
        "policy": {"ttl": 60_000},
    }
    await up.poll(UpstreamRef("../../x?y"))  # a hostile id stays one path segment
    assert seen[-1].url.raw_path == f"/v2/{ENDPOINT}/status/..%2F..%2Fx%3Fy".encode()
    assert "tok-123" not in repr(up)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"id": "j", "status": "COMPLETED"}, Done(result=b"null", status_code=200)),
        (200, {"id": "j", "status": "IN_QUEUE"}, Running(200, "IN_QUEUE")),
        (200, {"id": "j", "status": "SOMETHING_NEW"}, Running(200, "SOMETHING_NEW")),
        (200, {"status": "FAILED", "error": {"error_message": "oom"}}, Failed("oom", 200)),
        (200, {"status": "FAILED"}, Failed("the job failed at RunPod", 200)),
        (200, {"status": "FAILED", "error": WORKER_ERROR}, Failed("OutOfMemoryError: CUDA", 200)),
        (
            200,
            {"status": "TIMED_OUT", "error": "late"},
            Failed("the job timed out at RunPod: late", 200),
        ),
        (200, {"id": "j"}, Transient),
        (200, [1, 2], Transient),
        (404, {"error": "job not found"}, Expired),
        (429, {"error": "slow down"}, Transient),
        (401, {"error": "bad key"}, Failed("RunPod answered 401: bad key", 401)),
    ],
)
async def test_poll_classification(status, body, expected):
    up = _mock(lambda request: httpx.Response(status, json=body))
    out = await up.poll(UpstreamRef("j"))
    if isinstance(expected, type):
        assert isinstance(out, expected)
    else:
        assert out == expected


async def test_wrong_key_is_rejected_with_a_clear_message(provider: RunpodProvider):
    async with upstream_client() as client:
        config = provider.upstream(client).config
        up = RunpodUpstream("rp", config, "not-the-key", client)
        out = await up.submit(provider.inputs())
        assert isinstance(out, Rejected) and out.status_code == 401
        assert out.message == "RunPod refused the API key (401): missing or invalid token"
        assert "not-the-key" not in out.message


async def test_check_tries_the_key_on_the_endpoints_health(provider: RunpodProvider):
    """check tried the key with GET {url}, which RunPod has no route for (404 either way):
    never verified. The endpoint's /health needs the key."""
    async with upstream_client() as client:
        config = provider.upstream(client).config
    runpod = {**config.model_dump(mode="json"), "token_env": "RUNPOD_API_KEY"}
    accepted, refused = await check_verifies(runpod, TOKEN, "not-the-key")
    assert "/health: 200 with it" in accepted and "answers 401" in refused, refused
