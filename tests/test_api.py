"""The HTTP API: problems, tenants, idempotency, attempts, redeliver, cancel, OpenAPI.
Tests that need no upstream or receiver drive the API in process (`make_api`)."""

from __future__ import annotations

import asyncio

import jsonschema
import pytest

from bridge.dev.receiver import Reply
from tests.support.config import OTHER_KEY
from tests.support.inprocess import HOOK
from tests.support.problems import assert_problem
from tests.support.waiting import eventually


@pytest.mark.parametrize(
    ("content", "headers", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, "invalid-request"),
        (b'{"upstream": "echo"}', {"content-type": "application/json"}, "invalid-request"),
        (
            b'{"upstream": "echo", "inputs": [], "callback_url": "http://x"}',
            {"content-type": "application/json"},
            "invalid-request",
        ),
        (
            b'{"upstream": 5, "inputs": {}, "callback_url": "http://x"}',
            {"content-type": "application/json"},
            "invalid-request",
        ),
        (
            b'{"upstream": "echo", "inputs": {}, "callback_url": "http://127.0.0.1/", "x": 1}',
            {"content-type": "application/json"},
            "invalid-request",
        ),
        (
            b"upstream=echo",
            {"content-type": "application/x-www-form-urlencoded"},
            "unsupported-media-type",
        ),
    ],
)
async def test_bad_requests_get_problem_json(make_api, content, headers, code):
    api = await make_api()
    r = await api.client.post("/v1/jobs", content=content, headers=headers)
    assert_problem(r, 415 if code == "unsupported-media-type" else 400, code)


async def test_auth_and_unknown_upstream(make_api):
    s = await make_api()
    async with s.client_with(None) as anon:
        assert_problem(await anon.post("/v1/jobs", json={}), 401, "unauthorized")
        bad = {"Authorization": "Bearer nope"}
        assert_problem(await anon.get("/v1/jobs/job_x", headers=bad), 401, "unauthorized")
    assert_problem(await s.submit(upstream="nope"), 404, "unknown-upstream")


async def test_body_and_field_limits(make_api):
    s = await make_api(listen__max_body_bytes=2048)
    r = await s.submit(inputs={"blob": "x" * 4096})
    assert_problem(r, 413, "payload-too-large")
    r = await s.client.post(
        "/v1/jobs",
        content=b"{" * 3000,
        headers={"content-type": "application/json", "content-length": "3000"},
    )
    assert_problem(r, 413, "payload-too-large")
    s2 = await make_api()
    assert_problem(await s2.submit(metadata={"m": "x" * 17000}), 400, "invalid-request")
    r = await s2.client.post(
        "/v1/jobs",
        headers={"Idempotency-Key": "k" * 256},
        json={"upstream": "echo", "inputs": {}, "callback_url": HOOK},
    )
    assert_problem(r, 400, "invalid-request")


async def test_callback_url_rejected_with_rule(make_api):
    s = await make_api(callbacks__allow_private_networks=False, callbacks__allow_http=False)
    body = assert_problem(
        await s.submit(callback_url="ftp://example.com/x"), 422, "callback-rejected"
    )
    assert body["rule"] == "scheme"
    body = assert_problem(
        await s.submit(callback_url="http://example.com/x"), 422, "callback-rejected"
    )
    assert body["rule"] == "http-not-allowed"
    body = assert_problem(
        await s.submit(callback_url="https://127.0.0.1/x"), 422, "callback-rejected"
    )
    assert body["rule"] == "loopback-address"
    body = assert_problem(
        await s.submit(callback_url="https://169.254.169.254/x"), 422, "callback-rejected"
    )
    assert body["rule"] == "link-local-address"


async def test_tenant_isolation_on_every_job_endpoint(make_api):
    s = await make_api()
    job_id = (await s.submit()).json()["id"]
    async with s.client_with(OTHER_KEY) as other:
        for method, path in [
            ("GET", ""),
            ("GET", "/attempts"),
            ("POST", "/redeliver"),
            ("GET", "/result"),
            ("DELETE", ""),
        ]:
            r = await other.request(method, f"/v1/jobs/{job_id}{path}")
            assert_problem(r, 404, "not-found")
    assert (await s.client.get(f"/v1/jobs/{job_id}")).status_code == 200
    assert_problem(await s.client.get("/v1/jobs/job_nonsense"), 404, "not-found")
    assert_problem(await s.client.get("/v1/jobs/job_" + "0" * 27), 404, "not-found")


async def test_idempotency_key(make_stack):
    s = await make_stack()
    body = {"upstream": "echo", "inputs": {"a": 1}, "callback_url": s.hook()}
    first = await s.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    again = await s.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = await s.client.post(
        "/v1/jobs", json={**body, "inputs": {"a": 2}}, headers={"Idempotency-Key": "k1"}
    )
    assert_problem(other, 409, "idempotency-conflict")
    # the same key from another tenant is another job
    theirs = await s.other.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    assert s.emulator.requests["submit"] == 2


async def test_attempts_retries_and_redeliver_keep_webhook_id(make_stack):
    s = await make_stack()
    s.receiver.plan("/flaky", Reply(500, body=b"boom" * 400), Reply(302, {"location": "/x"}))
    job_id = (await s.submit(callback_url=s.hook("/flaky"))).json()["id"]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    await asyncio.sleep(0.1)
    attempts = (await s.client.get(f"/v1/jobs/{job_id}/attempts")).json()["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 302, 200]
    assert len(attempts[0]["response_excerpt"]) == 1024
    assert attempts[0]["error"] == "receiver answered 500"
    assert attempts[2]["error"] is None
    assert s.receiver.to("/x") == []  # the redirect was not followed
    r = await s.client.post(f"/v1/jobs/{job_id}/redeliver")
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 2, 5)
    ids = {d.webhook_id for d in s.receiver.deliveries}
    assert ids == {"msg_" + job_id[4:]}
    bodies = [d.event for d in s.receiver.succeeded()]
    assert bodies[0]["data"]["result"] == bodies[1]["data"]["result"]
    await asyncio.sleep(0.1)
    job = await s.job(job_id)
    assert job["delivery"]["state"] == "delivered" and job["delivery"]["attempts"] == 4


async def test_delivery_gives_up_after_schedule_and_410_stops(make_stack):
    s = await make_stack()
    s.receiver.plan("/down", *[Reply(500)] * 10)
    s.receiver.plan("/gone", Reply(410), Reply(200))
    down = (await s.submit(callback_url=s.hook("/down"))).json()["id"]
    gone = (await s.submit(callback_url=s.hook("/gone"))).json()["id"]

    async def both_failed() -> bool:
        states = [(await s.job(job_id))["delivery"]["state"] for job_id in (down, gone)]
        return states == ["failed", "failed"]

    assert await eventually(both_failed, 10)
    await asyncio.sleep(0.3)  # more than one retry interval: no attempt after failing
    assert len(s.receiver.to("/down")) == 4  # 1 + len(retry_schedule_s)
    assert len(s.receiver.to("/gone")) == 1
    for job_id in (down, gone):
        job = await s.job(job_id)
        assert job["status"] == "completed"
        assert job["delivery"]["state"] == "failed"
    assert (await s.job(down))["delivery"]["last_status_code"] == 500
    r = await s.client.post(f"/v1/jobs/{gone}/redeliver")  # still redeliverable
    assert r.status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.to("/gone")) == 2, 5)


async def test_retry_after_from_receiver_is_honoured(make_stack):
    s = await make_stack()
    s.receiver.plan("/busy", Reply(429, {"retry-after": "2"}))
    await s.submit(callback_url=s.hook("/busy"))
    assert await s.receiver.wait_for(lambda: len(s.receiver.to("/busy")) == 1, 5)
    first = s.receiver.to("/busy")[0].arrived_at
    assert await s.receiver.wait_for(lambda: len(s.receiver.to("/busy")) == 2, 5)
    assert s.receiver.to("/busy")[1].arrived_at - first >= 1.9  # schedule says 0.2 s


async def test_cancel(make_stack):
    s = await make_stack()
    job_id = (await s.submit(inputs={"_emulate": {"duration_s": 1}})).json()["id"]
    r = await s.client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert_problem(await s.client.delete(f"/v1/jobs/{job_id}"), 409, "job-terminal")
    body = assert_problem(await s.client.post(f"/v1/jobs/{job_id}/redeliver"), 409, "job-cancelled")
    assert "cancelled" in body["detail"] and "not terminal" not in body["detail"]
    polls = s.emulator.requests["poll"]
    await asyncio.sleep(1.5)
    assert s.emulator.requests["poll"] == polls
    assert s.receiver.deliveries == []


async def test_redeliver_and_result_before_terminal_conflict(make_api):
    s = await make_api()  # no upstream answers: the job stays queued
    job_id = (await s.submit(inputs={"_emulate": {"duration_s": 5}})).json()["id"]
    assert_problem(await s.client.post(f"/v1/jobs/{job_id}/redeliver"), 409, "job-not-terminal")
    assert_problem(await s.client.get(f"/v1/jobs/{job_id}/result"), 409, "job-not-terminal")


async def test_openapi_describes_the_real_routes_and_job(make_stack):
    s = await make_stack()
    spec = (await s.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    served = {r.path for r in s.bridge.server.config.app.routes}
    assert set(spec["paths"]) == served - {"/openapi.json"}
    job_id = (await s.submit()).json()["id"]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    await asyncio.sleep(0.1)
    schemas = spec["components"]["schemas"]
    resolver_doc = {"components": {"schemas": schemas}}
    for path, name in [(f"/v1/jobs/{job_id}", "Job"), (f"/v1/jobs/{job_id}/attempts", "Attempts")]:
        body = (await s.client.get(path)).json()
        schema = {**schemas[name], **resolver_doc}
        jsonschema.validate(body, schema)
    problem = (await s.client.get("/v1/jobs/job_bad")).json()
    jsonschema.validate(problem, schemas["Problem"])


async def test_health_ready_and_metrics(make_stack):
    s = await make_stack()
    assert (await s.client.get("/healthz")).json() == {"status": "ok"}
    assert (await s.client.get("/readyz")).status_code == 200
    await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    text = (await s.client.get("/metrics")).text
    assert 'pushbridge_jobs_submitted_total{upstream="echo"} 1.0' in text
    assert 'pushbridge_delivery_attempts_total{outcome="delivered"} 1.0' in text


async def test_store_down_answers_503_and_nothing_is_accepted(make_api, tmp_path):
    from redis.asyncio import Redis

    from bridge.store import Store
    from bridge.store.embedded import EmbeddedValkey

    s = await make_api()
    own = EmbeddedValkey(tmp_path / "v", appendonly=False)
    own.start()
    client = Redis.from_url(own.url, decode_responses=True, socket_connect_timeout=1)
    s.rt.store = Store(client, "pbtest", 8)
    try:
        assert (await s.submit()).status_code == 202
        own.kill()
        assert_problem(await s.submit(), 503, "store-unavailable")
        assert_problem(await s.client.get("/readyz"), 503, "store-unavailable")
        assert (await s.client.get("/healthz")).status_code == 200
    finally:
        await client.aclose()
        own.stop()
