"""Waiting for a job instead of (or besides) a callback (CONTRACT §3): `Prefer: wait=N` on
POST /v1/jobs, `?wait=N` on GET /v1/jobs/{id}, jobs without callback_url; real bridges
(in-process replicas and a `pushbridge serve` process) over one real Valkey."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bridge.engine.waiting import Waiters, until_terminal
from bridge.model import JobStatus
from bridge.store import Store
from bridge.store.embedded import free_port
from tests.conftest import API_KEY, ENV, Stack, base_config
from tests.test_cli import _start_serve, _stop, _wait_ready, _write


def _job(duration_s: float, **extra: object) -> dict:
    return {"upstream": "echo", "inputs": {"_emulate": {"duration_s": duration_s}}, **extra}


async def _post_waiting(
    client: httpx.AsyncClient, body: dict, prefer: str = "wait=10"
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = await client.post("/v1/jobs", json=body, headers={"Prefer": prefer}, timeout=90)
    return r, time.monotonic() - started


async def test_post_with_prefer_wait_answers_the_finished_job(make_stack):
    s: Stack = await make_stack()
    r, elapsed_s = await _post_waiting(s.client, _job(0.5, callback_url=s.hook()))
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "wait=10"
    job = r.json()
    assert job["status"] == "completed" and job["result"]["echo"]["_emulate"]
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert 0.4 < elapsed_s < 3
    # the callback is still sent: waiting is besides it
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)


async def test_post_with_prefer_wait_times_out_with_the_job_as_it_is(make_stack):
    s: Stack = await make_stack()
    r, elapsed_s = await _post_waiting(s.client, _job(5), prefer="wait=1")
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "wait=1"
    assert r.json()["status"] == "running"
    assert 0.9 < elapsed_s < 2.5


async def test_a_job_without_callback_is_read_back_and_expires(make_stack, redis: Redis):
    s: Stack = await make_stack()
    r, _ = await _post_waiting(s.client, _job(0.2))
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["callback_url"] is None and job["status"] == "completed"
    assert job["delivery"]["state"] == "none" and job["result"] is not None
    body = (await s.client.post(f"/v1/jobs/{job['id']}/redeliver")).json()
    assert body["code"] == "no-callback"
    assert 0 < await redis.pttl(s.rt.store.keys.job(job["id"])) <= 600_000
    assert 0 < await redis.pttl(s.rt.store.keys.result(job["id"])) <= 600_000
    assert not await redis.zcard(s.rt.store.keys.schedule("deliver", 0))
    await asyncio.sleep(0.3)
    assert s.receiver.deliveries == []
    # and one whose submit is refused for good: failed, nothing to deliver either
    bad = await s.client.post("/v1/jobs", json={"upstream": "echo", "inputs": {}, "x": 1})
    assert bad.status_code == 400 and "x: unknown field" in bad.json()["detail"]
    null_cb = await s.client.post("/v1/jobs", json={**_job(0.1), "callback_url": ""})
    assert null_cb.status_code == 400 and "callback_url" in null_cb.json()["detail"]


async def test_get_wait_returns_when_the_job_finishes_in_another_replica(make_stack):
    # replica 0 runs the job; replica 1 serves the API only: its waiter is woken by the
    # notice that replica 0's commit published, through the store
    s: Stack = await make_stack(roles=["all", "api"])
    job_id = (await s.submit(inputs={"_emulate": {"duration_s": 1.0}})).json()["id"]
    other = s.replicas[1][2]
    started = time.monotonic()
    r = await other.get(f"/v1/jobs/{job_id}", params={"wait": 20}, timeout=30)
    elapsed_s = time.monotonic() - started
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert r.json()["result"] is not None
    assert 0.5 < elapsed_s < 3
    # at once when already terminal; after N seconds for one still running
    r = await other.get(f"/v1/jobs/{job_id}", params={"wait": 20})
    assert r.json()["status"] == "completed"
    slow_id = (await s.submit(inputs={"_emulate": {"duration_s": 30}})).json()["id"]
    started = time.monotonic()
    r = await other.get(f"/v1/jobs/{slow_id}", params={"wait": 1})
    assert r.json()["status"] == "running" and 0.9 < time.monotonic() - started < 2.5
    # another tenant's job is not found, waiting or not
    assert (await s.other.get(f"/v1/jobs/{job_id}", params={"wait": 1})).status_code == 404


async def test_post_waiting_on_an_api_replica_while_a_worker_replica_finishes_it(make_stack):
    s: Stack = await make_stack(roles=["api", "worker"])
    r, elapsed_s = await _post_waiting(s.client, _job(0.5))
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert elapsed_s < 3


async def test_waiting_reads_the_store_only_when_woken(store: Store, redis: Redis):
    """No polling per waiter: the job is read when the wait starts and when a notice (or
    the deadline) comes, however long it waits."""
    created = await store.create_job("t", {"tenant": "t", "status": "running"}, 60_000, "s")
    reads = 0

    async def read():
        nonlocal reads
        reads += 1
        return await store.get_job(created.job_id)

    waiters = Waiters(10)
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(until_terminal(waiters, created.job_id, loop.time() + 30, read))
    await asyncio.sleep(1.5)
    assert reads == 1 and waiters.count == 1
    await redis.hset(store.keys.job(created.job_id), "status", "completed")
    waiters.wake(created.job_id)  # what the notice subscription does (engine/notices.py)
    job, outcome = await waiting
    assert (job.status, outcome, reads, waiters.count) == (JobStatus.COMPLETED, "terminal", 2, 0)


async def test_the_number_of_waiting_requests_is_bounded(make_stack):
    s: Stack = await make_stack(listen__max_waiters=1)
    first_id = (await s.submit(inputs={"_emulate": {"duration_s": 3}})).json()["id"]
    waiting = asyncio.create_task(s.client.get(f"/v1/jobs/{first_id}", params={"wait": 10}))
    await asyncio.sleep(0.3)
    assert s.rt.waiters.count == 1
    # beyond the bound: at once, as without Prefer / ?wait
    r, elapsed_s = await _post_waiting(s.client, _job(3))
    assert r.status_code == 202 and "preference-applied" not in r.headers
    assert elapsed_s < 1
    started = time.monotonic()
    r = await s.client.get(f"/v1/jobs/{first_id}", params={"wait": 10})
    assert r.json()["status"] == "running" and time.monotonic() - started < 1
    assert (await waiting).json()["status"] == "completed"
    metrics = (await s.client.get("/metrics")).text
    assert 'pushbridge_wait_outcomes_total{outcome="refused"} 2.0' in metrics
    assert 'pushbridge_wait_outcomes_total{outcome="terminal"} 1.0' in metrics
    assert "pushbridge_waiters 0.0" in metrics


async def test_wait_values(make_stack):
    s: Stack = await make_stack()
    for bad in ("61", "-1", "1.5", "x", "\uff11"):  # a fullwidth digit one
        r = await s.client.get("/v1/jobs/job_000000000000000000000000000", params={"wait": bad})
        assert r.status_code == 400 and r.json()["code"] == "invalid-request", bad
    r = await s.client.get("/v1/jobs/job_000000000000000000000000000?wait=1&wait=2")
    assert r.status_code == 400
    # a malformed preference is ignored (RFC 7240); one above 60 is applied as 60
    r, elapsed_s = await _post_waiting(s.client, _job(0.3), prefer="wait=soon")
    assert r.status_code == 202 and "preference-applied" not in r.headers and elapsed_s < 1
    r, _ = await _post_waiting(s.client, _job(0.3), prefer='respond-async, WAIT = "999"')
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=60"
    r, _ = await _post_waiting(s.client, _job(0.3), prefer="wait=0")
    assert r.status_code == 202 and "preference-applied" not in r.headers


async def test_an_idempotent_replay_waits_too(make_stack):
    s: Stack = await make_stack()
    headers = {"Idempotency-Key": "k-1"}
    first = await s.client.post("/v1/jobs", json=_job(0.8), headers=headers)
    assert first.status_code == 202
    r = await s.client.post("/v1/jobs", json=_job(0.8), headers={**headers, "Prefer": "wait=10"})
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert r.json()["id"] == first.json()["id"]


async def test_waiting_requests_answer_when_the_server_drains(make_stack):
    s: Stack = await make_stack()
    job_id = (await s.submit(inputs={"_emulate": {"duration_s": 30}})).json()["id"]
    async with httpx.AsyncClient(base_url=s.bridge.url) as c:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        get = asyncio.create_task(c.get(f"/v1/jobs/{job_id}", params={"wait": 60}, headers=headers))
        post = asyncio.create_task(
            c.post("/v1/jobs", json=_job(30), headers={**headers, "Prefer": "wait=60"})
        )
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await s.bridge.stop()
        got, posted = await asyncio.wait_for(asyncio.gather(get, post), 5)
    assert time.monotonic() - started < 2  # not the grace period (10 s)
    assert got.status_code == 200 and got.json()["status"] == "running"
    assert posted.status_code == 202 and posted.json()["status"] == "running"
    assert posted.headers["preference-applied"] == "wait=60"


def _serve_config(tmp_path: Path, emulator_url: str, valkey_url: str, port: int) -> str:
    raw = base_config(emulator_url, listen__port=port)
    raw["store"]["url"] = valkey_url
    raw["log"] = {"format": "json"}
    return _write(tmp_path, raw)


async def test_a_serve_process_waits_for_a_job_another_process_runs_and_drains_on_sigterm(
    make_stack, valkey, tmp_path
):
    # this test process runs the worker; a `pushbridge serve --role api` process (its own
    # interpreter, its own subscription) holds the waiting requests
    s: Stack = await make_stack(role="worker")
    port = free_port()
    config = _serve_config(tmp_path, s.emulator_srv.url, valkey.url, port)
    proc = await _start_serve(["--config", config, "--role", "api"], ENV, tmp_path)
    try:
        await _wait_ready(f"http://127.0.0.1:{port}", proc)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as c:
            r, elapsed_s = await _post_waiting(c, _job(0.5))
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text
            assert elapsed_s < 3
            pending = [asyncio.create_task(_post_waiting(c, _job(30), "wait=60")) for _ in range(3)]
            await asyncio.sleep(1.0)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = await asyncio.wait_for(asyncio.gather(*pending), 10)
            assert time.monotonic() - started < 3
        for r, _ in answers:
            assert r.status_code == 202 and r.json()["status"] == "running", r.text
        code, out = await _stop(proc)
        assert code == 0, out[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
