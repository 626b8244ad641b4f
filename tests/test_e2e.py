"""End to end over real loopback HTTP: API → emulator → poller → signed callback."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from bridge.dev.emulators.octoai import EmulatorSettings
from tests.support.config import SECRET, UPSTREAM_TOKEN
from tests.support.waiting import until


@pytest.mark.parametrize("store", ["single", "cluster"])
async def test_job_completes_and_callback_verifies(make_stack, store):
    s = await make_stack(cluster=store == "cluster")
    r = await s.submit(metadata={"order": 7})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "running"
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    d = s.receiver.succeeded()[0]
    Webhook(SECRET).verify(d.body, d.headers)  # the reference verifier, not ours
    assert d.headers["user-agent"].startswith("pushbridge/")
    assert d.headers["content-type"] == "application/json"
    event = d.event
    assert event["type"] == "job.completed"
    assert event["data"]["id"] == job["id"]
    assert event["data"]["metadata"] == {"order": 7}
    assert event["data"]["result"]["echo"] == {"prompt": "hi"}
    assert d.webhook_id == "msg_" + job["id"][4:]
    await asyncio.sleep(0.1)
    final = await s.job(job["id"])
    assert final["status"] == "completed"
    assert final["result"]["echo"] == {"prompt": "hi"}
    assert final["delivery"]["state"] == "delivered"
    assert final["delivery"]["attempts"] == 1
    assert final["delivery"]["last_status_code"] == 200
    assert final["completed_at"] is not None


async def test_upstream_receives_token_and_async_header(make_stack):
    s = await make_stack(emulator=EmulatorSettings(duration_s=0.1, token="other-token"))
    r = await s.submit()
    # the emulator requires a different token: the submit is rejected with 401 → 422
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "upstream-rejected"
    assert body["upstream_status"] == 401
    job = await s.job(body["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream-rejected"
    assert job["delivery"]["state"] == "none"
    await asyncio.sleep(0.3)
    assert s.receiver.deliveries == []  # no callback for a rejected job


async def test_failed_inference_sends_job_failed(make_stack):
    s = await make_stack()
    r = await s.submit(inputs={"_emulate": {"outcome": "failed", "duration_s": 0.1}})
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    event = s.receiver.succeeded()[0].event
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "upstream-failed"
    assert "emulated inference failure" in event["data"]["error"]["message"]


async def test_expired_future_fails_with_upstream_expired(make_stack):
    s = await make_stack()
    r = await s.submit(inputs={"_emulate": {"outcome": "expired", "duration_s": 0.1}})
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    event = s.receiver.succeeded()[0].event
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "upstream-expired"
    assert event["data"]["error"]["upstream_status"] == 404


async def test_polls_back_off_between_min_and_max(make_stack):
    s = await make_stack()
    r = await s.submit(inputs={"_emulate": {"duration_s": 1.5}})
    job_id = r.json()["id"]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    polls = s.emulator.futures[(await s.job(job_id))["upstream_id"]].polls
    # 0.05 s first, then 0.05 * 1.5^n capped at 0.3 s: about 8 polls for 1.5 s, far fewer
    # than polling every 50 ms (30) and more than one per max interval (5)
    assert 5 <= polls <= 12, polls


async def test_large_result_goes_by_signed_link(make_stack):
    s = await make_stack(callbacks__max_inline_result_bytes=1000)
    r = await s.submit(inputs={"_emulate": {"duration_s": 0.1, "result_bytes": 5000}})
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    data = s.receiver.succeeded()[0].event["data"]
    assert data["result"] is None
    url = data["result_url"]
    assert url.startswith(s.bridge.url)
    async with httpx.AsyncClient() as anon:  # no API key
        got = await anon.get(url)
        assert got.status_code == 200
        assert len(got.json()["padding"]) == 5000
        # another job's id: the id's last character changed (the URL's, as before, left the
        # id as it was whenever the id, hex, ended in "0": about one run in 16)
        other_id = data["id"][:-1] + ("0" if data["id"][-1] != "0" else "1")
        assert other_id != data["id"]
        tampered = url.replace(data["id"], other_id)
        assert (await anon.get(tampered)).status_code == 403
        assert (await anon.get(url.replace("sig=", "sig=x"))).status_code == 403
    authed = await s.client.get(f"/v1/jobs/{data['id']}/result")
    assert authed.status_code == 200 and len(authed.json()["padding"]) == 5000


async def test_inline_or_link_is_decided_by_bytes_in_callback_and_api_alike(make_stack):
    # 2000 two-byte characters: under the limit in characters, over it in bytes
    s = await make_stack(callbacks__max_inline_result_bytes=3000)
    r = await s.submit(inputs={"text": "é" * 2000, "_emulate": {"duration_s": 0.1}})
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    data = s.receiver.succeeded()[0].event["data"]
    assert data["result"] is None and data["result_url"]
    job = await s.job(data["id"])
    assert job["result"] is None and job["result_url"]


async def test_queued_while_upstream_unhealthy_then_submitted(make_stack):
    settings = EmulatorSettings(duration_s=0.1, token=UPSTREAM_TOKEN, healthy=False)
    s = await make_stack(emulator=settings)
    assert await until(lambda: not s.rt.health.healthy("echo"))  # noticed
    r = await s.submit()
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    assert s.emulator.requests["submit"] == 0
    settings.healthy = True
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    assert s.receiver.succeeded()[0].event["type"] == "job.completed"


async def test_transient_submit_failure_is_retried_in_background(make_stack):
    settings = EmulatorSettings(duration_s=0.1, token=UPSTREAM_TOKEN, submit_503_rate=1.0)
    s = await make_stack(emulator=settings)
    r = await s.submit()
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    settings.submit_503_rate = 0.0
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    assert s.emulator.requests["submit"] >= 2


async def test_poll_errors_and_429_are_retried(make_stack):
    settings = EmulatorSettings(
        duration_s=0.3,
        token=UPSTREAM_TOKEN,
        poll_503_rate=0.4,
        poll_429_rate=0.2,
        retry_after_s=0,
        seed=3,
    )
    s = await make_stack(emulator=settings)
    ids = [(await s.submit()).json()["id"] for _ in range(5)]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 5, 15)
    assert {d.event["data"]["id"] for d in s.receiver.succeeded()} == set(ids)
    assert all(d.event["type"] == "job.completed" for d in s.receiver.succeeded())


async def test_retry_after_on_poll_is_honoured(make_stack):
    settings = EmulatorSettings(
        duration_s=0.1, token=UPSTREAM_TOKEN, poll_429_rate=1.0, retry_after_s=1
    )
    s = await make_stack(emulator=settings)
    await s.submit()
    await asyncio.sleep(1.4)
    # first poll at 0.05 s answered 429 with Retry-After: 1 → the next poll waits ≥ 1 s
    assert s.emulator.requests["poll"] == 2


async def test_deadline_fails_the_job(make_stack):
    s = await make_stack(upstreams__echo__poll__deadline_s=0.5)
    r = await s.submit(inputs={"_emulate": {"duration_s": 30}})
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    event = s.receiver.succeeded()[0].event
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "deadline-exceeded"


async def test_upstream_connect_refused_queues_then_deadline(make_stack):
    s = await make_stack(
        upstreams__echo__url="http://127.0.0.1:9/infer/echo",
        upstreams__echo__health_url=None,
        upstreams__echo__poll__deadline_s=1.5,
    )
    r = await s.submit()
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued"
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    assert s.receiver.succeeded()[0].event["data"]["error"]["code"] == "deadline-exceeded"
