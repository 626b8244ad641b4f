"""runpod and fal through the HTTP API (CONTRACT §5b), each against its emulator on
127.0.0.1 with a real Valkey: the mapped result, the provider's failure text, cancel
reaching the provider, expiry, 429 with Retry-After, malformed provider answers, and a
wrong token (upstream-rejected with a clear message, the token in no log line)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.dev.emulators.common import EmulatorSettings, EmulatorState
from bridge.obs.logs import configure_logging
from tests.conftest import FAST_POLL, UPSTREAM_TOKEN, Stack
from tests.upstreams.contract import FaultInjector
from tests.upstreams.test_fal import fal_step
from tests.upstreams.test_runpod import runpod_step


@dataclass(frozen=True)
class Protocol:
    name: str
    step_of: Callable[[str, str], str | None]
    path: str  # the upstream's url below the emulator's
    wrong_key: str  # the job's error message when the token is wrong

    def config(self, base_url: str) -> dict[str, Any]:
        poll = {**FAST_POLL, "adaptive": False}
        return {"protocol": self.name, "url": f"{base_url}{self.path}", "health_url": None,
                "poll": poll}  # fmt: skip


PROTOCOLS = [
    Protocol(
        "runpod",
        runpod_step,
        "/v2/ep0abc123",
        "RunPod refused the API key (401): missing or invalid token",
    ),
    Protocol(
        "fal",
        fal_step,
        "/fal-ai/flux/dev",
        "fal refused the key (401): missing or invalid token",
    ),
]


@dataclass
class Provider:
    settings: EmulatorSettings
    state: EmulatorState
    faults: FaultInjector
    stack: Stack


@pytest.fixture(params=PROTOCOLS, ids=[p.name for p in PROTOCOLS])
def provider(request, make_stack) -> Callable[..., Any]:
    """(settings=None, **config overrides) -> a stack whose upstream "echo" speaks the
    protocol to its emulator (behind a fault injector)."""
    protocol: Protocol = request.param

    async def make(settings: EmulatorSettings | None = None, **overrides: Any) -> Provider:
        settings = settings or EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN, seed=1)
        stack = await make_stack(
            settings, protocol=protocol.name, upstream=protocol.config,
            faults=protocol.step_of, **overrides,
        )  # fmt: skip
        assert stack.faults is not None
        return Provider(settings, stack.emulator, stack.faults, stack)

    make.protocol = protocol  # type: ignore[attr-defined]
    return make


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the test (debug and up), as the bridge writes them."""
    stream = io.StringIO()
    configure_logging("json", "debug", stream)
    yield stream
    configure_logging("json", "info")


async def test_success_with_the_mapped_result(provider):
    p = await provider()
    inputs = {"prompt": "a cat", "steps": 4}
    job = (await p.stack.submit(inputs=inputs)).json()
    event = await p.stack.event()
    assert event["type"] == "job.completed" and event["data"]["id"] == job["id"]
    result = event["data"]["result"]
    assert result["echo"] == inputs  # the provider's output (runpod) / response body (fal)
    assert ("text" in result) if provider.protocol.name == "runpod" else ("images" in result)
    upstream_id = (await p.stack.job(job["id"]))["upstream_id"]
    assert upstream_id in p.state.futures


async def test_provider_failure_carries_its_message(provider):
    p = await provider()
    knobs = {"outcome": "failed", "duration_s": 0.1, "error": "CUDA out of memory"}
    await p.stack.submit(inputs={"_emulate": knobs})
    event = await p.stack.event()
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "upstream-failed"
    assert event["data"]["error"]["message"] == "CUDA out of memory"


async def test_cancel_reaches_the_provider(provider):
    p = await provider()
    job = (await p.stack.submit(inputs={"_emulate": {"duration_s": 30}})).json()
    assert job["status"] == "running" and job["upstream_id"]
    deleted = await p.stack.client.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
    assert p.state.requests["cancel"] == 1
    assert p.state.futures[job["upstream_id"]].outcome == "cancelled"
    await asyncio.sleep(0.3)
    assert p.stack.receiver.deliveries == []  # a cancelled job has no callback


async def test_expired_at_the_provider(provider):
    p = await provider()
    await p.stack.submit(inputs={"_emulate": {"outcome": "expired", "duration_s": 0.1}})
    event = await p.stack.event()
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "upstream-expired"


async def test_429_retry_after_is_honoured(provider):
    settings = EmulatorSettings(
        duration_s=0.1, token=UPSTREAM_TOKEN, poll_429_rate=1.0, retry_after_s=1
    )
    p = await provider(settings)
    await p.stack.submit()
    await asyncio.sleep(1.4)
    # the first poll (at 0.05 s) got 429 with Retry-After: 1, so the next waits ≥ 1 s
    assert p.state.requests["poll"] == 2
    settings.poll_429_rate = 0.0
    assert (await p.stack.event())["type"] == "job.completed"


async def test_malformed_provider_answers_are_retried(provider, logs):
    p = await provider()
    p.faults.plan("submit", 200, b"{not json", {})
    for body in (b"<html>", b"[1, 2]", b'{"status": 12}', b""):
        p.faults.plan("poll", 200, body, {})
    p.faults.plan("poll", 502, b"Bad Gateway", {"Retry-After": "0"})
    job = (await p.stack.submit(inputs={"n": 1})).json()
    assert job["status"] == "queued"  # the submit's answer was garbage: retried later
    event = await p.stack.event(timeout_s=15)
    assert event["type"] == "job.completed" and event["data"]["result"]["echo"] == {"n": 1}
    assert len(p.faults.requests) >= 8  # 2 submits, 5 bad polls, 1 good one
    assert "upstream" in logs.getvalue() and UPSTREAM_TOKEN not in logs.getvalue()


@pytest.mark.parametrize("health_checked", [False, True], ids=["at-once", "health-checked"])
async def test_wrong_token_fails_upstream_rejected(provider, logs, health_checked):
    """Also once the health watcher has asked the provider with the wrong token: RunPod's
    /health answered 401, the upstream counted as down, and the job waited as queued."""
    p = await provider(EmulatorSettings(duration_s=0.1, token="the-right-one"))
    if health_checked:
        await asyncio.sleep(0.5)  # the watcher asks every 0.2 s
    response = await p.stack.submit()
    problem = response.json()  # the API submits at once, so the client hears it
    assert response.status_code == 422 and problem["code"] == "upstream-rejected"
    assert problem["upstream_status"] == 401
    assert problem["upstream_body"] == provider.protocol.wrong_key
    job = await p.stack.job(problem["job_id"])
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "upstream-rejected",
        "message": provider.protocol.wrong_key,
        "upstream_status": 401,
    }
    assert "upstream-rejected" in logs.getvalue()  # the log line is there ...
    assert UPSTREAM_TOKEN not in logs.getvalue()  # ... without the token
    assert UPSTREAM_TOKEN not in response.text and UPSTREAM_TOKEN not in str(job)
