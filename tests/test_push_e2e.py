"""Push end to end (CONTRACT §5b) with the real adapters and emulators: replicate, runpod
and fal each call back per job on the push URL pushbridge gave them (the bridge's own
loopback URL as listen.public_url), through the HTTP API, with a real Valkey.

The poll schedule is slow (first poll after 20 s) wherever only a push can explain a
quick finish."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from bridge.dev.emulators.common import EmulatorSettings, Future
from tests.conftest import UPSTREAM_TOKEN, Stack

SLOW_POLL = {"initial_delay_s": 20, "min_interval_s": 20, "max_interval_s": 20, "adaptive": False}


@dataclass(frozen=True)
class Protocol:
    name: str
    path: str  # the upstream's url below the emulator's
    extra: dict[str, Any]  # more keys of the upstream's config

    def upstream(self, poll: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
        def keys(emulator_url: str) -> dict[str, Any]:
            return {
                "protocol": self.name,
                "url": f"{emulator_url}{self.path}",
                "health_url": f"{emulator_url}/healthz",
                **self.extra,
                "poll": {"deadline_s": 60, "timeout_s": 2, **poll},
            }

        return keys


PROTOCOLS = [
    Protocol("replicate", "/v1", {"model": "acme/echo"}),
    Protocol("runpod", "/v2/ep0abc123", {}),
    Protocol("fal", "/fal-ai/flux/dev", {}),
]
REPLICATE = PROTOCOLS[0]
by_protocol = pytest.mark.parametrize("proto", PROTOCOLS, ids=[p.name for p in PROTOCOLS])


async def push_stack(
    make_stack: Callable[..., Awaitable[Stack]],
    proto: Protocol,
    poll: dict[str, Any] | None = None,
    **overrides: Any,
) -> Stack:
    emulator = EmulatorSettings(duration_s=0.5, token=UPSTREAM_TOKEN, seed=1)
    return await make_stack(
        emulator=emulator,
        protocol=proto.name,
        upstream=proto.upstream(poll or SLOW_POLL),
        public_url_self=True,
        **overrides,
    )


def future(s: Stack, job: dict[str, Any]) -> Future:
    return s.emulator.futures[job["upstream_id"]]


def push_url(s: Stack, job: dict[str, Any]) -> str:
    url = getattr(future(s, job), "webhook", None)
    assert isinstance(url, str), "the provider was given no push URL"
    return url


async def delivered(s: Stack, job_id: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """The job's callback event and when it arrived (epoch seconds)."""

    def found() -> bool:
        return any(d.event["data"]["id"] == job_id for d in s.receiver.succeeded())

    assert await s.receiver.wait_for(found, timeout_s), f"{job_id} not delivered in {timeout_s} s"
    d = next(d for d in s.receiver.succeeded() if d.event["data"]["id"] == job_id)
    return d.event, d.arrived_at


def counter(metrics: str, line: str) -> float:
    for row in metrics.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


@by_protocol
async def test_a_push_finishes_the_job_with_one_poll_and_little_lag(make_stack, proto):
    s = await push_stack(make_stack, proto)
    r = await s.submit(inputs={"prompt": "hi", "_emulate": {"duration_s": 0.5}})
    assert r.status_code == 202, r.text
    job = r.json()
    url = push_url(s, job)
    assert url.startswith(f"{s.bridge.url}/v1/push/echo/{job['id']}/"), url
    event, arrived_at = await delivered(s, job["id"], 5)
    assert event["type"] == "job.completed"
    assert event["data"]["result"]["echo"]["prompt"] == "hi"
    lag_s = arrived_at - future(s, job).ready_at
    assert lag_s < 1.0, f"lag {lag_s:.3f} s: not the push (the first poll is at 20 s)"
    assert future(s, job).polls == 1
    # the provider took pushbridge's answer as a success: it will not push again
    for _ in range(40):
        if s.emulator.requests["webhook_sent"]:
            break
        await asyncio.sleep(0.05)
    assert s.emulator.requests["webhook_sent"] == 1
    assert s.emulator.requests["webhook_failed"] == 0
    metrics = (await s.client.get("/metrics")).text
    assert counter(metrics, 'pushbridge_pushes_received_total{upstream="echo"}') == 1


@by_protocol
async def test_a_lost_push_is_made_up_by_the_safety_poll(make_stack, proto):
    # polls every 1 s, 3 times further apart once pushes arrive: the first job's push is
    # seen, the second job's is lost (the emulator never sends it) and a safety poll at
    # ~3 s finishes it
    poll = {"initial_delay_s": 1, "min_interval_s": 1, "max_interval_s": 1, "adaptive": False}
    s = await push_stack(make_stack, proto, poll | {"push_slowdown": 3})
    first = (await s.submit(inputs={"_emulate": {"duration_s": 0.2}})).json()
    await delivered(s, first["id"], 5)
    assert s.rt.pushes.arriving("echo")
    started = time.monotonic()
    lost = (await s.submit(inputs={"_emulate": {"duration_s": 0.2, "lose_webhook": True}})).json()
    event, _ = await delivered(s, lost["id"], 10)
    took_s = time.monotonic() - started
    assert event["type"] == "job.completed"
    assert 2.5 < took_s < 6, f"{took_s:.2f} s: not the slowed safety poll"
    assert future(s, lost).polls == 1
    assert s.emulator.requests["webhook_lost"] == 1


def _signed_push(secret: str, body: bytes) -> dict[str, str]:
    msg_id, now = "msg_forged", datetime.now(tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


async def _replicate_secret(emulator_url: str) -> dict[str, str]:
    """The emulator's webhook secret, read as an operator does (GET
    /v1/webhooks/default/secret), for upstreams.echo.push_secret_env."""
    async with httpx.AsyncClient() as c:
        r = await c.get(
            f"{emulator_url}/v1/webhooks/default/secret",
            headers={"Authorization": f"Bearer {UPSTREAM_TOKEN}"},
        )
    r.raise_for_status()
    return {"REPLICATE_PUSH_SECRET": r.json()["key"]}


async def test_replicate_pushes_are_verified_with_the_providers_secret(make_stack):
    s = await push_stack(
        make_stack,
        REPLICATE,
        env=_replicate_secret,
        upstreams__echo__push_secret_env="REPLICATE_PUSH_SECRET",
    )
    secret = s.rt.secrets.push_secrets["echo"]
    # the emulator's own signed push is accepted
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.3}})).json()
    _, arrived_at = await delivered(s, job["id"], 5)
    assert arrived_at - future(s, job).ready_at < 1.0 and future(s, job).polls == 1
    # forged pushes for a job whose real push is lost: refused, nothing polled
    long = {"_emulate": {"duration_s": 30, "lose_webhook": True}}
    job = (await s.submit(inputs=long)).json()
    body = b'{"id": "forged", "status": "succeeded", "output": "FORGED"}'
    other = "whsec_" + base64.b64encode(b"not-the-provider-secret-01234567").decode()
    async with httpx.AsyncClient() as c:
        for headers in (
            {"content-type": "application/json"},  # unsigned
            _signed_push(other, body),  # signed with another secret
            {**_signed_push(secret, body), "webhook-id": "msg_other"},  # altered
        ):
            r = await c.post(push_url(s, job), content=body, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "push-unverified", headers
        await asyncio.sleep(0.3)
        assert future(s, job).polls == 0
        assert (await s.job(job["id"]))["status"] == "running"
        # signed with the provider's secret: accepted; the job is polled (still running)
        r = await c.post(push_url(s, job), content=body, headers=_signed_push(secret, body))
        assert r.status_code == 200
    for _ in range(50):
        if future(s, job).polls == 1:
            break
        await asyncio.sleep(0.05)
    assert future(s, job).polls == 1
    now = await s.job(job["id"])
    assert now["status"] == "running" and now["result"] is None
    metrics = (await s.client.get("/metrics")).text
    refused = 'pushbridge_pushes_refused_total{reason="signature",upstream="echo"}'
    assert counter(metrics, refused) == 3


@by_protocol
async def test_a_push_for_a_cancelled_job_does_nothing(make_stack, proto):
    s = await push_stack(make_stack, proto)
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.6}})).json()
    assert (await s.client.delete(f"/v1/jobs/{job['id']}")).status_code == 200
    # the provider's own push (if it sends one for a cancelled job), then one more
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient() as c:
        r = await c.post(push_url(s, job), json={"status": "succeeded", "output": "late"})
    assert r.status_code == 200
    await asyncio.sleep(0.5)
    after = await s.job(job["id"])
    assert after["status"] == "cancelled" and after["result"] is None
    assert future(s, job).polls == 0
    assert s.receiver.deliveries == []
    assert urlsplit(push_url(s, job)).path.startswith(f"/v1/push/echo/{job['id']}/")


@by_protocol
async def test_a_push_of_a_failure_fails_the_job_at_once(make_stack, proto):
    s = await push_stack(make_stack, proto)
    knobs = {"duration_s": 0.4, "outcome": "failed", "error": "out of memory"}
    job = (await s.submit(inputs={"_emulate": knobs})).json()
    event, arrived_at = await delivered(s, job["id"], 5)
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "upstream-failed"
    assert "out of memory" in event["data"]["error"]["message"]
    assert arrived_at - future(s, job).ready_at < 1.0 and future(s, job).polls == 1


@by_protocol
async def test_a_push_before_the_submit_is_answered(make_stack, proto):
    # a job that is done at once: the provider may push before pushbridge has its submit
    # answer (and committed it); submitted once, finished without waiting for the 20 s poll
    s = await push_stack(make_stack, proto)
    started = time.monotonic()
    jobs = [(await s.submit(inputs={"_emulate": {"duration_s": 0}})).json() for _ in range(3)]
    for job in jobs:
        await delivered(s, job["id"], 5)
    assert time.monotonic() - started < 3
    assert s.emulator.requests["submit"] == 3
    assert all(future(s, job).polls == 1 for job in jobs)
