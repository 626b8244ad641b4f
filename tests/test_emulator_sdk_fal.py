"""The fal emulator is faithful: fal's own SDK (fal-client 1.0.3) runs the queue flow on it
(submit, status, result, subscribe, failure, cancel, the async client, fal_webhook), and
its errors reach the SDK the way fal's would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.dev.emulators import fal as fal_emulator
from bridge.dev.emulators.fal import RETENTION_S, EmulatorSettings, create_emulator_app
from bridge.dev.receiver import Receiver, Reply
from tests.sdk_support import no_outside_connections, serve

TOKEN = "fal-sdk-key"
APP = "fal-ai/flux/dev"  # owner fal-ai, app flux, subpath dev


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, EmulatorSettings]]:
    import fal_client.client

    monkeypatch.delenv("FAL_KEY", raising=False)
    settings = EmulatorSettings(duration_s=0.3, token=TOKEN, future_ttl_s=RETENTION_S)
    with no_outside_connections(), serve(create_emulator_app(settings)) as base:
        # FAL_QUEUE_RUN_HOST is host-only behind a hard-coded https://: the SDK's own
        # module global (read at each call) points it at the emulator instead
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{base}/")
        yield base, settings


def _client(key: str = TOKEN) -> Any:
    import fal_client

    return fal_client.SyncClient(key=key)


def test_submit_status_result_with_the_real_sdk(emulator):
    import fal_client

    base, _ = emulator
    client = _client()
    # queued for 0.5 s, then running for 1 s: each state is seen with room for a slow machine
    inputs = {"prompt": "a cat", "_emulate": {"duration_s": 1.5, "queue_s": 0.5}}
    handle = client.submit(APP, inputs)
    assert handle.status_url == f"{base}/fal-ai/flux/requests/{handle.request_id}/status"
    assert isinstance(handle.status(), fal_client.Queued)
    time.sleep(0.6)
    in_progress = handle.status(with_logs=True)
    assert isinstance(in_progress, fal_client.InProgress) and in_progress.logs
    events = list(handle.iter_events(interval=0.02))
    done = events[-1]
    assert isinstance(done, fal_client.Completed) and done.error is None
    assert done.metrics["inference_time"] > 0
    result = handle.get()
    assert result["echo"] == inputs and result["images"][0]["url"].startswith("https://")
    again = client.get_handle(APP, handle.request_id)  # URLs the SDK builds itself
    assert isinstance(again.status(), fal_client.Completed)
    assert client.result(APP, handle.request_id) == result


def test_subscribe(emulator):
    queued: list[Any] = []
    out = _client().subscribe(
        "someone/app", {"n": 3}, with_logs=True, on_queue_update=queued.append, interval=0.02
    )
    assert out["echo"] == {"n": 3} and queued


def test_failure_is_completed_with_an_error(emulator):
    import fal_client
    from fal_client.client import FalClientHTTPError

    client = _client()
    knobs = {"outcome": "failed", "duration_s": 0, "queue_s": 0, "error": "CUDA out of memory"}
    handle = client.submit(APP, {"_emulate": knobs | {"error_type": "runner_error"}})
    status = handle.status()
    assert isinstance(status, fal_client.Completed)
    assert (status.error, status.error_type) == ("CUDA out of memory", "runner_error")
    with pytest.raises(FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.status_code == 500 and caught.value.message == "CUDA out of memory"
    invalid = client.submit("owner/app", ["not", "an", "object"])  # the app's input model
    with pytest.raises(FalClientHTTPError) as caught:
        invalid.get()
    assert caught.value.status_code == 422 and caught.value.message[0]["type"] == "dict_type"


def test_cancel(emulator):
    import fal_client
    from fal_client.client import FalClientHTTPError

    client = _client()
    handle = client.submit(APP, {"_emulate": {"duration_s": 30}})
    handle.cancel()
    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error == "Request cancelled"
    with pytest.raises(FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.status_code == 499
    with pytest.raises(FalClientHTTPError) as caught:
        handle.cancel()  # finished: nothing to cancel
    assert caught.value.status_code == 400
    assert caught.value.response.json() == {"status": "ALREADY_COMPLETED"}


async def test_async_client(emulator):
    import fal_client

    client = fal_client.AsyncClient(key=TOKEN)
    handle = await client.submit("owner/app", {"a": 1, "_emulate": {"duration_s": 0.1}})
    assert isinstance(await handle.status(), fal_client.Queued | fal_client.InProgress)
    assert (await handle.get())["echo"]["a"] == 1
    slow = await client.submit("owner/app", {"_emulate": {"duration_s": 30}})
    await slow.cancel()
    assert (await slow.status()).error == "Request cancelled"


def test_wrong_key_is_the_sdks_http_error(emulator):
    from fal_client.client import FalClientHTTPError

    with pytest.raises(FalClientHTTPError) as caught:
        _client("wrong").submit(APP, {"p": 1})
    assert caught.value.status_code == 401
    assert caught.value.message == "missing or invalid token"


def test_unknown_expired_and_aged_out_requests_are_404(emulator, monkeypatch):
    from fal_client.client import FalClientHTTPError

    client = _client()
    with pytest.raises(FalClientHTTPError) as caught:
        client.status(APP, "00000000-0000-0000-0000-000000000000")
    assert caught.value.status_code == 404
    expired = client.submit(APP, {"_emulate": {"outcome": "expired", "duration_s": 0.05}})
    time.sleep(0.1)
    with pytest.raises(FalClientHTTPError, match="Request not found"):
        expired.status()
    live = client.submit(APP, {"_emulate": {"duration_s": 5}})
    with pytest.raises(FalClientHTTPError, match="Request not found"):
        client.status("fal-ai/other-app", live.request_id)
    monkeypatch.setattr(fal_emulator, "LARGE_RETENTION_S", 0.1)  # 6 min for >= 10 KB results
    large = client.submit(APP, {"_emulate": {"duration_s": 0, "result_bytes": 10_240}})
    small = client.submit(APP, {"_emulate": {"duration_s": 0, "result_bytes": 100}})
    time.sleep(0.2)
    with pytest.raises(FalClientHTTPError) as caught:
        large.get()
    assert caught.value.status_code == 404
    assert len(small.get()["padding"]) == 100


def test_fal_webhook(emulator):
    receiver = Receiver()
    receiver.plan("/ok", Reply(status=503))  # retried later (fal: up to 10 times)
    with serve(receiver.app()) as hooks:
        ok = _client().submit(
            APP, {"p": 1, "_emulate": {"duration_s": 0.1}}, webhook_url=f"{hooks}/ok"
        )
        bad = _client().submit(
            APP,
            {"_emulate": {"outcome": "failed", "duration_s": 0.1, "status_code": 422}},
            webhook_url=f"{hooks}/bad",
        )
        deadline = time.monotonic() + 5
        while len(receiver.deliveries) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    first = receiver.to("/ok")[0].event
    assert first["request_id"] == ok.request_id and first["status"] == "OK"
    assert first["payload"]["echo"]["p"] == 1 and first["error"] is None
    failed = receiver.to("/bad")[0].event
    assert failed["request_id"] == bad.request_id and failed["status"] == "ERROR"
    assert failed["error"] == "Invalid status code: 422"
    assert failed["payload"] == {"detail": "emulated app failure"}


def test_strict_like_fal(emulator):
    base, settings = emulator
    auth = {"Authorization": f"Key {TOKEN}"}
    bearer = httpx.post(f"{base}/owner/app", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 401 and bearer.json() == {"detail": "missing or invalid token"}
    assert httpx.post(f"{base}/owner/app", content=b"{", headers=auth).status_code == 400
    hook = httpx.post(f"{base}/owner/app?fal_webhook=ftp://x", json={}, headers=auth)
    assert hook.status_code == 422
    submitted = httpx.post(  # 1 s: still running at the next requests, even under load
        f"{base}/owner/app", json={"_emulate": {"duration_s": 1.0}}, headers=auth
    )
    assert submitted.status_code == 200
    urls = submitted.json()
    assert set(urls) >= {"request_id", "status_url", "response_url", "cancel_url"}
    assert httpx.get(urls["status_url"], headers=auth).status_code == 202
    not_yet = httpx.get(urls["response_url"], headers=auth)
    assert not_yet.status_code == 400
    assert httpx.get(urls["cancel_url"], headers=auth).status_code == 405  # PUT only
    assert httpx.get(f"{base}/owner", headers=auth).json() == {"detail": "Not Found"}
    deadline = time.monotonic() + 10
    while (done := httpx.get(urls["status_url"], headers=auth)).status_code == 202:
        assert time.monotonic() < deadline, "still running after 10 s"
        time.sleep(0.05)
    assert done.status_code == 200 and done.json()["status"] == "COMPLETED"
    settings.poll_429_rate = 1.0
    limited = httpx.get(urls["status_url"], headers=auth)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    settings.poll_429_rate, settings.submit_503_rate = 0.0, 1.0
    down = httpx.post(f"{base}/owner/app", json={}, headers=auth)
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
