"""The replicate emulator is faithful: Replicate's own SDK (replicate 1.0.7) runs its flows on it.

The SDK is pointed at the emulator on 127.0.0.1 (`base_url`, `trust_env=False`: no proxy, no
network). What the SDK cannot send or parse (`Cancel-After`, the `aborted` status, bodies it
never builds) is checked with plain httpx against the same server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.dev.emulators import PROTOCOLS
from bridge.dev.emulators.replicate import EmulatorSettings, create_emulator_app
from tests.sdk_support import serve

TOKEN = "r8_sdk-token"
VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
TEXT = "She sells seashells by the seashore"


@pytest.fixture
def emulator(monkeypatch) -> Iterator[tuple[str, EmulatorSettings]]:
    for var in ("REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "REPLICATE_POLL_INTERVAL"):
        monkeypatch.delenv(var, raising=False)
    settings = EmulatorSettings(duration_s=0.3, token=TOKEN)
    with serve(create_emulator_app(settings)) as base:
        yield base, settings


def sdk(base: str, token: str | None = TOKEN, **kwargs):
    import replicate

    client = replicate.Client(api_token=token, base_url=base, trust_env=False, **kwargs)
    client.poll_interval = 0.05
    return client


def test_registered_for_the_cli():
    assert PROTOCOLS["replicate"] is create_emulator_app


def test_official_model_flow_create_poll_output(emulator):
    base, _ = emulator
    client = sdk(base)
    inputs = {"prompt": "write a haiku about llamas"}
    prediction = client.predictions.create(model="meta/meta-llama-3-8b-instruct", input=inputs)
    assert prediction.status == "starting"
    assert prediction.model == "meta/meta-llama-3-8b-instruct"
    assert prediction.urls["get"] == f"{base}/v1/predictions/{prediction.id}"
    assert prediction.urls["cancel"] == f"{base}/v1/predictions/{prediction.id}/cancel"
    assert prediction.output is None and prediction.completed_at is None
    seen = {prediction.status}
    while prediction.status not in ("succeeded", "failed", "canceled"):
        time.sleep(0.02)
        prediction.reload()
        seen.add(prediction.status)
    assert seen == {"starting", "processing", "succeeded"}
    assert prediction.output == {"text": TEXT, "echo": inputs}
    assert prediction.error is None and prediction.completed_at and prediction.started_at
    assert prediction.metrics["predict_time"] > 0


def test_version_flow_and_run(emulator):
    base, _ = emulator
    client = sdk(base)
    prediction = client.predictions.create(version=VERSION, input={"seed": 42})
    assert prediction.version == VERSION
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.output["echo"] == {"seed": 42}
    out = client.run(f"stability-ai/sdxl:{VERSION}", input={"seed": 7}, use_file_output=False)
    assert out == {"text": TEXT, "echo": {"seed": 7}}  # Prefer: wait held the request
    assert client.run("meta/llama", input={"a": 1}, wait=False) == {"text": TEXT, "echo": {"a": 1}}


async def test_async_flow(emulator):
    base, _ = emulator
    client = sdk(base)
    prediction = await client.predictions.async_create(model="owner/model", input={"x": 1})
    await prediction.async_wait()
    assert prediction.status == "succeeded" and prediction.output["echo"] == {"x": 1}


def test_failure_carries_the_error_text(emulator):
    import replicate.exceptions

    base, _ = emulator
    client = sdk(base)
    knobs = {"outcome": "failed", "duration_s": 0.1, "error": "CUDA out of memory"}
    prediction = client.predictions.create(model="o/m", input={"_emulate": knobs})
    prediction.wait()
    assert prediction.status == "failed" and prediction.error == "CUDA out of memory"
    assert prediction.output is None
    with pytest.raises(replicate.exceptions.ModelError, match="CUDA out of memory"):
        client.run("o/m", input={"_emulate": knobs})


def test_cancel(emulator):
    base, _ = emulator
    client = sdk(base)
    prediction = client.predictions.create(model="o/m", input={"_emulate": {"duration_s": 30}})
    prediction.cancel()
    assert prediction.status == "canceled" and prediction.completed_at
    again = client.predictions.get(prediction.id)
    assert again.status == "canceled" and again.output is None
    done = client.predictions.create(model="o/m", input={"_emulate": {"duration_s": 0}})
    assert client.predictions.cancel(done.id).status == "succeeded"  # too late: unchanged


def test_auth_errors_are_the_sdks_exception(emulator):
    from replicate.exceptions import ReplicateError

    base, _ = emulator
    for token in ("wrong", None):
        with pytest.raises(ReplicateError) as e:
            sdk(base, token).predictions.create(model="o/m", input={})
        assert e.value.status == 401 and e.value.title == "Unauthenticated"
        assert e.value.detail == "You did not pass a valid authentication token"
    assert sdk(base).accounts.current().username == "emulator"


def test_refusals_the_way_replicate_words_them(emulator):
    from replicate.exceptions import ReplicateError

    base, settings = emulator
    client = sdk(base)
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(version="stability-ai/sdxl:latest", input={})
    assert e.value.status == 422 and e.value.title == "Invalid version or not permitted"
    with pytest.raises(ReplicateError) as e:
        client.predictions.get("nosuchprediction")
    assert e.value.status == 404
    settings.update({"poll_429_rate": 1.0, "retry_after_s": 0})
    prediction = client.predictions.create(model="o/m", input={})
    with pytest.raises(ReplicateError) as e:  # the SDK retried GET on 429, then gave up
        prediction.reload()
    assert e.value.status == 429 and "Request was throttled" in e.value.detail
    settings.update({"poll_429_rate": 0.0, "submit_503_rate": 1.0})
    with pytest.raises(ReplicateError) as e:  # POST is not retried by the SDK
        client.predictions.create(model="o/m", input={})
    assert e.value.status == 503


def test_expired_prediction_has_its_data_removed(emulator):
    base, _ = emulator
    client = sdk(base)
    prediction = client.predictions.create(
        model="o/m", input={"_emulate": {"outcome": "expired", "duration_s": 0}}
    )
    prediction.reload()
    assert prediction.status == "succeeded" and prediction.output is None
    assert prediction.input is None  # the SDK's model drops `data_removed`; the API has it:
    raw = httpx.get(
        prediction.urls["get"], headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False
    )
    assert raw.json()["data_removed"] is True and raw.json()["output"] is None


def test_webhooks_signed_and_validated_by_the_sdk(emulator):
    base, _ = emulator
    received: list[tuple[dict[str, str], str]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), (await request.body()).decode()))
        return Response(status_code=204)

    client = sdk(base)
    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        prediction = client.predictions.create(
            model="o/m",
            input={"n": 1},
            webhook=f"{receiver}/hook",
            webhook_events_filter=["start", "completed"],
        )
        prediction.wait()
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    secret = client.webhooks.default.secret()
    assert secret.key.startswith("whsec_")
    assert len(received) == 2
    for headers, body in received:
        client.webhooks.validate(headers=headers, body=body, secret=secret, tolerance=60)
    import json

    started, completed = (json.loads(body) for _, body in received)
    assert started["id"] == completed["id"] == prediction.id
    assert started["status"] == "processing" and started["output"] is None
    assert completed["status"] == "succeeded" and completed["output"]["echo"] == {"n": 1}
    from replicate.webhook import InvalidSignatureError, WebhookSigningSecret

    headers, body = received[1]
    with pytest.raises(InvalidSignatureError):
        client.webhooks.validate(
            headers=headers,
            body=body.replace("1", "2"),
            secret=WebhookSigningSecret(key=secret.key),
        )


def test_what_the_sdk_cannot_send(emulator):
    base, _ = emulator
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, trust_env=False, headers=auth) as c:
        assert c.get("/v1/nope").status_code == 404
        assert c.get("/v1/nope").headers["content-type"] == "application/problem+json"
        assert c.put("/v1/predictions", json={}).status_code == 405
        assert c.post("/v1/predictions", content=b"{").status_code == 400
        r = c.post("/v1/models/o/m/predictions", json={"prompt": "no input wrapper"})
        assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "input"
        r = c.post("/v1/models/o/m/predictions", json={"input": {}, "webhook": "not a url"})
        assert r.status_code == 422
        r = c.post(
            "/v1/models/o/m/predictions", json={"input": {}, "webhook_events_filter": ["done"]}
        )
        assert r.status_code == 422
        r = c.post("/v1/models/o/m/predictions", json={"input": {}}, headers={"Authorization": ""})
        assert r.status_code == 401
        r = c.post(
            "/v1/models/o/m/predictions",
            json={"input": {"_emulate": {"start_s": 5, "duration_s": 10}}},
            headers={"Cancel-After": "100ms"},
        )
        assert r.status_code == 201
        time.sleep(0.2)
        p = c.get(f"/v1/predictions/{r.json()['id']}").json()
        assert p["status"] == "aborted" and "started_at" not in p
        r = c.post(
            "/v1/models/o/m/predictions",
            json={"input": {"_emulate": {"start_s": 0, "duration_s": 10}}},
            headers={"Cancel-After": "0.1s"},
        )
        time.sleep(0.2)
        assert c.get(f"/v1/predictions/{r.json()['id']}").json()["status"] == "canceled"
