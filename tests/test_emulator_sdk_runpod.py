"""The runpod emulator is faithful: RunPod's own SDK (runpod 1.12.0) runs the serverless
async flow on it (run, status, output, failure, cancel, health, runsync, the asyncio
client, the per-job webhook), and its errors reach the SDK the way RunPod's would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from bridge.dev.emulators.runpod import RETENTION_S, EmulatorSettings, create_emulator_app
from bridge.dev.receiver import Receiver, Reply
from tests.sdk_support import no_outside_connections, serve

TOKEN = "rp-sdk-token"
ENDPOINT = "ep0abc123"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, EmulatorSettings]]:
    import runpod

    settings = EmulatorSettings(duration_s=0.3, token=TOKEN, future_ttl_s=RETENTION_S)
    with no_outside_connections(), serve(create_emulator_app(settings)) as base:
        # what RUNPOD_ENDPOINT_BASE_URL sets at import; read by every client at construction
        monkeypatch.setattr(runpod, "endpoint_url_base", f"{base}/v2")
        monkeypatch.setattr(runpod, "api_key", None)
        yield base, settings


def _endpoint(key: str = TOKEN) -> Any:
    import runpod

    return runpod.Endpoint(ENDPOINT, api_key=key)


def _wait_terminal(job: Any, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    seen = set()
    while time.monotonic() < deadline:
        status = job.status()
        seen.add(status)
        if status in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"):
            return status
        assert status in ("IN_QUEUE", "IN_PROGRESS"), status
        time.sleep(0.03)
    raise AssertionError(f"job still running; statuses seen: {seen}")


def test_run_poll_output_with_the_real_sdk(emulator):
    base, _ = emulator
    endpoint = _endpoint()
    # queued for 0.5 s, then running for 1 s: each state is seen with room for a slow machine
    inputs = {"prompt": "hello", "_emulate": {"duration_s": 1.5, "queue_s": 0.5}}
    job = endpoint.run(inputs)
    assert job.job_id.endswith("-u1")
    assert job.status() == "IN_QUEUE"
    time.sleep(0.6)
    assert job.status() == "IN_PROGRESS"
    assert _wait_terminal(job) == "COMPLETED"
    output = job.output()
    assert output == {"text": "She sells seashells by the seashore", "echo": inputs}
    raw = httpx.get(
        f"{base}/v2/{ENDPOINT}/status/{job.job_id}", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert raw["id"] == job.job_id and raw["status"] == "COMPLETED"
    assert raw["delayTime"] >= 150 and raw["executionTime"] >= 150
    health = endpoint.health()
    assert health["jobs"]["completed"] == 1 and set(health["workers"]) == {"idle", "running"}


def test_output_waits_with_the_sdk_timeout(emulator):
    job = _endpoint().run({"input": {"n": 1}, "policy": {"ttl": 60_000}})
    assert job.output(timeout=5)["echo"] == {"n": 1}


def test_failure_carries_the_handler_error(emulator):
    endpoint = _endpoint()
    job = endpoint.run({"_emulate": {"outcome": "failed", "duration_s": 0, "error": "CUDA OOM"}})
    assert _wait_terminal(job) == "FAILED"
    assert job.output() is None
    state = job._fetch_job()
    assert state["status"] == "FAILED" and state["error"] == "CUDA OOM"
    timed_out = endpoint.run({"_emulate": {"outcome": "timed_out", "duration_s": 0}})
    assert _wait_terminal(timed_out) == "TIMED_OUT"


def test_cancel_reaches_the_job(emulator):
    endpoint = _endpoint()
    job = endpoint.run({"_emulate": {"duration_s": 30}})
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED"
    assert endpoint.health()["jobs"]["inQueue"] == 0
    done = endpoint.run({"_emulate": {"duration_s": 0}})
    assert _wait_terminal(done) == "COMPLETED"
    assert done.cancel()["status"] == "COMPLETED"  # a finished job stays finished


def test_runsync(emulator):
    assert _endpoint().run_sync({"x": 2}, timeout=10)["echo"] == {"x": 2}


async def test_asyncio_client(emulator):
    import runpod
    from runpod.http_client import ClientSession

    async with ClientSession() as session:
        endpoint = runpod.AsyncioEndpoint(ENDPOINT, session, api_key=TOKEN)
        job = await endpoint.run({"a": 1, "_emulate": {"duration_s": 0.1}})
        assert await job.status() in ("IN_QUEUE", "IN_PROGRESS")
        assert (await job.output(timeout=5))["echo"]["a"] == 1
        slow = await endpoint.run({"_emulate": {"duration_s": 30}})
        assert (await slow.cancel())["status"] == "CANCELLED"
        assert (await endpoint.health())["jobs"]["completed"] >= 1


def test_wrong_key_is_the_sdks_unauthorized_error(emulator):
    from runpod.endpoint.helpers import UNAUTHORIZED_MSG

    with pytest.raises(RuntimeError, match="401 Unauthorized"):
        _endpoint("wrong").run({"p": 1})
    with pytest.raises(RuntimeError) as caught:
        _endpoint("wrong").health()
    assert str(caught.value) == UNAUTHORIZED_MSG


def test_unknown_or_expired_job_is_404(emulator):
    import runpod
    from runpod.endpoint.runner import Job, RunPodClient

    with pytest.raises(requests.HTTPError) as caught:
        Job(ENDPOINT, "no-such-job-u1", RunPodClient(api_key=TOKEN)).status()
    assert caught.value.response.status_code == 404
    assert caught.value.response.json() == {"error": "job not found"}
    job = _endpoint().run({"_emulate": {"outcome": "expired", "duration_s": 0.05}})
    time.sleep(0.1)
    with pytest.raises(requests.HTTPError, match="404"):
        job.status()
    other = runpod.Endpoint("another-endpoint", api_key=TOKEN)
    live = _endpoint().run({"_emulate": {"duration_s": 5}})
    with pytest.raises(requests.HTTPError, match="404"):
        Job(other.endpoint_id, live.job_id, other.rp_client).status()


def test_webhook_posts_the_status_object(emulator):
    receiver = Receiver()
    receiver.plan("/hook", Reply(status=500))  # first try fails; RunPod retries 10 s later
    with serve(receiver.app()) as hooks:
        url = f"{hooks}/hook"
        inputs = {"prompt": "p", "_emulate": {"duration_s": 0.1}}
        job = _endpoint().run({"input": inputs, "webhook": url})
        ok = _endpoint().run({"input": {"_emulate": {"duration_s": 0.1}}, "webhook": f"{url}2"})
        deadline = time.monotonic() + 5
        while len(receiver.deliveries) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    first = receiver.to("/hook")[0].event
    assert first["id"] == job.job_id and first["status"] == "COMPLETED"
    assert first["input"] == inputs and first["webhook"] == url
    assert first["output"]["echo"] == inputs and "executionTime" in first
    assert receiver.to("/hook2")[0].event["id"] == ok.job_id


def test_strict_like_runpod(emulator):
    base, settings = emulator
    auth = {"Authorization": f"Bearer {TOKEN}"}
    run_url = f"{base}/v2/{ENDPOINT}/run"
    bare = httpx.post(run_url, json={"input": {}}, headers={"Authorization": TOKEN})
    assert bare.status_code == 200 and bare.json()["status"] == "IN_QUEUE"  # the docs' curl
    missing = httpx.post(run_url, json={"prompt": "x"}, headers=auth)
    assert missing.status_code == 400 and "input" in missing.json()["error"]
    extra = httpx.post(run_url, json={"input": {}, "webhok": "http://x"}, headers=auth)
    assert extra.status_code == 400 and "webhok" in extra.json()["error"]
    hook = httpx.post(run_url, json={"input": {}, "webhook": "ftp://x"}, headers=auth)
    assert hook.status_code == 400
    assert httpx.post(run_url, content=b"{", headers=auth).status_code == 400
    wrong_path = httpx.post(f"{base}/v2/{ENDPOINT}/start", json={"input": {}}, headers=auth)
    assert wrong_path.status_code == 404 and wrong_path.json() == {"error": "not found"}
    assert httpx.get(run_url, headers=auth).status_code == 405
    assert httpx.post(run_url, json={"input": {}}).status_code == 401
    settings.poll_429_rate = 1.0
    job_id = bare.json()["id"]
    limited = httpx.get(f"{base}/v2/{ENDPOINT}/status/{job_id}", headers=auth)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    settings.poll_429_rate, settings.submit_503_rate = 0.0, 1.0
    down = httpx.post(run_url, json={"input": {}}, headers=auth)
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
