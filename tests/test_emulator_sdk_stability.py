"""The Stability emulator speaks Stability's v2beta asynchronous API as its documentation
shows it. Stability has no official Python SDK for v2beta (stability-sdk speaks the older
gRPC API), so this drives the emulator with plain httpx, request for request as the
documentation's Python examples do: a multipart POST that answers an id, then
GET /v2beta/results/{id} until 202 becomes 200."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from bridge.dev.emulators.common import EmulatorSettings
from bridge.dev.emulators.stability import PNG, create_emulator_app
from tests.sdk_support import serve

TOKEN = "sk-" + "a" * 48
AUTH = {"authorization": f"Bearer {TOKEN}"}
UPSCALE = "/v2beta/stable-image/upscale/creative"


@pytest.fixture
def emulator() -> Iterator[tuple[httpx.Client, EmulatorSettings]]:
    settings = EmulatorSettings(duration_s=0.3, token=TOKEN)
    with serve(create_emulator_app(settings)) as url, httpx.Client(base_url=url) as client:
        yield client, settings


def _upscale(client: httpx.Client, emulate: dict | None = None, **fields: str) -> httpx.Response:
    data = {"prompt": "a sharp photo of a cat", "output_format": "png", **fields}
    if emulate is not None:
        data["_emulate"] = orjson.dumps(emulate).decode()
    return client.post(
        UPSCALE,
        headers={**AUTH, "accept": "application/json"},
        files={"image": ("input.png", PNG, "image/png")},
        data=data,
    )


def _wait(client: httpx.Client, generation_id: str, accept: str) -> httpx.Response:
    while True:
        r = client.get(f"/v2beta/results/{generation_id}", headers={**AUTH, "accept": accept})
        if r.status_code != 202:
            return r
        assert r.json() == {"id": generation_id, "status": "in-progress"}
        time.sleep(0.05)


def test_upscale_then_results_202_until_200_with_the_image(emulator):
    client, _ = emulator
    started = _upscale(client)
    assert started.status_code == 200
    generation_id = started.json()["id"]
    assert len(generation_id) == 64 and int(generation_id, 16) >= 0
    as_json = _wait(client, generation_id, "application/json")
    assert as_json.status_code == 200
    body = as_json.json()
    assert body["finish_reason"] == "SUCCESS" and isinstance(body["seed"], int)
    assert base64.b64decode(body["image"]).startswith(b"\x89PNG")
    raw = client.get(f"/v2beta/results/{generation_id}", headers={**AUTH, "accept": "image/*"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert raw.content.startswith(b"\x89PNG") and raw.headers["finish-reason"] == "SUCCESS"


def test_image_to_video_answers_a_video(emulator):
    client, _ = emulator
    started = client.post(
        "/v2beta/image-to-video",
        headers=AUTH,
        files={"image": ("input.png", PNG, "image/png")},
        data={"cfg_scale": "1.8", "motion_bucket_id": "127", "seed": "7"},
    )
    assert started.status_code == 200, started.text
    body = _wait(client, started.json()["id"], "application/json").json()
    assert set(body) == {"video", "finish_reason", "seed"} and body["seed"] == 7


def test_flagged_filtered_and_expired_generations(emulator):
    client, _ = emulator
    flagged = _upscale(client, {"duration_s": 0, "outcome": "failed"}).json()["id"]
    answer = _wait(client, flagged, "application/json")
    assert answer.status_code == 403
    assert answer.json()["name"] == "content_moderation" and answer.json()["errors"]
    filtered = _upscale(client, {"duration_s": 0, "outcome": "filtered"}).json()["id"]
    assert _wait(client, filtered, "application/json").json()["finish_reason"] == (
        "CONTENT_FILTERED"
    )
    expired = _upscale(client, {"duration_s": 0, "outcome": "expired"}).json()["id"]
    assert _wait(client, expired, "application/json").status_code == 404
    unknown = client.get("/v2beta/results/" + "0" * 64, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["name"] == "not_found"


def test_bad_requests_get_stabilitys_error_shape(emulator):
    client, settings = emulator
    cases = [
        client.post(UPSCALE, headers=AUTH, json={"prompt": "x"}),  # not multipart
        client.post(UPSCALE, headers=AUTH, files={"image": ("a.png", PNG)}),  # no prompt
        client.post(UPSCALE, headers=AUTH, data={"prompt": "x", "image": "not a file"}),
        _upscale(client, creativity="3"),
        _upscale(client, output_format="gif"),
    ]
    for r in cases:
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["name"] == "bad_request" and body["errors"] and len(body["id"]) == 32
    wrong = client.post(
        UPSCALE, headers={"authorization": "Bearer sk-wrong"}, files={"image": ("a.png", PNG)}
    )
    assert wrong.status_code == 401 and wrong.json()["name"] == "unauthorized"
    assert client.post("/v2beta/stable-image/nope", headers=AUTH).status_code == 404
    settings.poll_429_rate, settings.retry_after_s = 1.0, 10
    limited = client.get("/v2beta/results/" + "0" * 64, headers=AUTH)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "10"
    assert limited.json()["name"] == "rate_limit_exceeded"


def test_balance_answers_for_health(emulator):
    client, settings = emulator
    assert client.get("/v1/user/balance", headers=AUTH).json()["credits"] > 0
    assert client.get("/v1/user/balance").status_code == 401
    settings.healthy = False
    assert client.get("/v1/user/balance", headers=AUTH).status_code == 503
