"""The replicate protocol through the HTTP API: bridge (uvicorn) -> replicate emulator ->
poller -> signed callback, all on 127.0.0.1, with the suite's Valkey."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from standardwebhooks.webhooks import Webhook

from bridge.dev.emulators.common import EmulatorSettings
from bridge.dev.emulators.replicate import Prediction
from bridge.obs.logs import configure_logging
from tests.conftest import SECRET, UPSTREAM_TOKEN
from tests.upstreams.servers import http_answer, raw_server

MODEL = "acme/echo"


def replicate_at(model: str = MODEL):
    def upstream(emulator_url: str) -> dict[str, Any]:
        return {
            "protocol": "replicate",
            "url": f"{emulator_url}/v1",
            "health_url": f"{emulator_url}/healthz",
            "model": model,
        }

    return upstream


async def replicate_stack(make_stack, **settings: Any):
    emulator = EmulatorSettings(**{"duration_s": 0.2, "token": UPSTREAM_TOKEN, **settings})
    return await make_stack(emulator=emulator, protocol="replicate", upstream=replicate_at())


def prediction(s, upstream_id: str) -> Prediction:
    p = s.emulator.futures[upstream_id]
    assert isinstance(p, Prediction)
    return p


async def failed_event(s) -> dict[str, Any]:
    event = await s.event()
    assert event["type"] == "job.failed"
    return event["data"]


async def test_success_delivers_the_predictions_output(make_stack):
    s = await replicate_stack(make_stack)
    r = await s.submit(inputs={"prompt": "hi", "seed": 7})
    assert r.status_code == 202, r.text
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    d = s.receiver.succeeded()[0]
    Webhook(SECRET).verify(d.body, d.headers)
    data = d.event["data"]
    assert d.event["type"] == "job.completed"
    assert data["result"] == {
        "text": "She sells seashells by the seashore",
        "echo": {"prompt": "hi", "seed": 7},
    }
    p = prediction(s, data["upstream_id"])
    assert (p.model, p.version, p.inputs) == (MODEL, "hidden", {"prompt": "hi", "seed": 7})
    assert s.emulator.requests["submit"] == 1 and s.emulator.requests["poll"] >= 1


async def test_provider_failure_carries_its_message(make_stack):
    s = await replicate_stack(make_stack)
    knobs = {"outcome": "failed", "duration_s": 0.1, "error": "CUDA out of memory"}
    await s.submit(inputs={"_emulate": knobs})
    data = await failed_event(s)
    assert data["error"]["code"] == "upstream-failed"
    assert data["error"]["message"] == "CUDA out of memory"


async def test_cancel_reaches_replicate_and_sends_no_callback(make_stack):
    s = await replicate_stack(make_stack)
    r = await s.submit(inputs={"_emulate": {"duration_s": 30}})
    job_id = r.json()["id"]
    for _ in range(50):
        job = await s.job(job_id)
        if job.get("upstream_id"):
            break
        await asyncio.sleep(0.05)
    r = await s.client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert s.emulator.requests["cancel"] == 1
    assert prediction(s, job["upstream_id"]).canceled_at is not None
    await asyncio.sleep(0.4)
    assert s.receiver.deliveries == []


async def test_expiry_data_removed_and_404(make_stack):
    s = await replicate_stack(make_stack)
    await s.submit(inputs={"_emulate": {"outcome": "expired", "duration_s": 0.1}})
    data = await failed_event(s)
    assert data["error"]["code"] == "upstream-expired"
    assert "1 hour" in data["error"]["message"]
    s.receiver.deliveries.clear()
    r = await s.submit(inputs={"_emulate": {"duration_s": 0.3}})
    job_id = r.json()["id"]
    upstream_id = r.json()["upstream_id"] or (await s.job(job_id))["upstream_id"]
    del s.emulator.futures[upstream_id]  # Replicate forgot it
    data = await failed_event(s)
    assert data["error"]["code"] == "upstream-expired"
    assert data["error"]["upstream_status"] == 404


async def test_429_retry_after_is_honoured(make_stack):
    s = await replicate_stack(make_stack, duration_s=0.1, poll_429_rate=1.0, retry_after_s=1)
    await s.submit()
    await asyncio.sleep(1.4)
    # first poll at 0.05 s answered 429 with Retry-After: 1 -> the next one waits >= 1 s
    assert s.emulator.requests["poll"] == 2


async def test_malformed_replicate_answers_retry_then_deadline(make_stack):
    def answer(head: bytes) -> bytes:
        if head.startswith(b"POST"):
            return http_answer(201, b'{"id": "p1", "status": "starting"}')
        return http_answer(200, b"<html>oops</html>")

    async with raw_server(answer) as url:
        s = await make_stack(
            protocol="replicate",
            upstream=lambda _: {
                "protocol": "replicate",
                "url": f"{url}/v1",
                "health_url": None,
                "model": MODEL,
            },
            upstreams__echo__poll__deadline_s=0.8,
        )
        r = await s.submit()
        assert r.status_code == 202
        await asyncio.sleep(0.4)
        job = await s.job(r.json()["id"])
        assert job["status"] == "running" and job["upstream_id"] == "p1"
        data = await failed_event(s)
    assert data["error"]["code"] == "deadline-exceeded"


async def test_wrong_token_fails_upstream_rejected_and_stays_out_of_logs(make_stack):
    buf = io.StringIO()
    configure_logging("json", "debug", stream=buf)
    try:
        s = await replicate_stack(make_stack, token="the-token-replicate-knows")
        r = await s.submit()
    finally:
        configure_logging("json", "info")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "upstream-rejected" and body["upstream_status"] == 401
    job = await s.job(body["job_id"])
    assert job["status"] == "failed"
    assert (
        "Unauthenticated: You did not pass a valid authentication token"
        in (job["error"]["message"])
    )
    logs = buf.getvalue()
    assert '"event": "job failed"' in logs
    assert UPSTREAM_TOKEN not in logs + r.text + str(job)
