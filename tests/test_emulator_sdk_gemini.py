"""The gemini emulator is faithful: Google's own SDK (google-genai 2.34.0) runs the Veo flow of
the Gemini Developer API on it (generate_videos, operations.get until done, the result and
its video, failure, the safety filter, errors). The API has no cancel for these operations."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from bridge.dev.emulators.gemini import EmulatorSettings, create_emulator_app
from tests.sdk_support import offline, serve

KEY = "AIza-emulator-key"
MODEL = "veo-3.1-generate-preview"


@pytest.fixture
def emulator(monkeypatch) -> Iterator[tuple[str, EmulatorSettings]]:
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI",
                 "GOOGLE_GEMINI_BASE_URL", "GOOGLE_CLOUD_PROJECT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    settings = EmulatorSettings(duration_s=0.4, token=KEY)
    with offline(monkeypatch) as outside, serve(create_emulator_app(settings)) as url:
        yield url, settings
    assert outside == [], outside  # nothing tried to leave 127.0.0.1


def client(base: str, key: str = KEY):
    from google import genai
    from google.genai import types

    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))


def generate(c, prompt: str = "A neon hologram of a cat", emulate: dict[str, Any] | None = None):
    from google.genai import types

    http_options = types.HttpOptions(extra_body={"_emulate": emulate}) if emulate else None
    return c.models.generate_videos(
        model=MODEL,
        source=types.GenerateVideosSource(prompt=prompt),
        config=types.GenerateVideosConfig(
            aspect_ratio="16:9", number_of_videos=2, http_options=http_options
        ),
    )


def wait_done(c, op):
    polls = 0
    while not op.done:
        polls += 1
        time.sleep(0.03)
        op = c.operations.get(op)
    return op, polls


def test_veo_flow_with_the_real_sdk(emulator):
    base, _ = emulator
    c = client(base)
    op = generate(c)
    assert op.name.startswith(f"models/{MODEL}/operations/") and not op.done
    op, polls = wait_done(c, op)
    assert polls >= 1 and op.error is None
    videos = op.result.generated_videos
    assert len(videos) == 2 and videos[0].video.uri.startswith(f"{base}/v1beta/files/")
    file_id = videos[0].video.uri.split("/files/")[1].split(":")[0]
    data = c.files.download(file=f"files/{file_id}")
    assert data[4:8] == b"ftyp"
    stats = httpx.get(f"{base}/_emulator/stats").json()
    assert stats["requests"] == {"submit": 1, "poll": polls, "result": 1}


def test_failure_and_safety_filter_as_the_sdk_reads_them(emulator):
    base, _ = emulator
    c = client(base)
    op, _ = wait_done(c, generate(c, emulate={"outcome": "failed", "duration_s": 0}))
    assert op.error == {"code": 13, "message": "emulated inference failure"}
    assert op.result is None
    op, _ = wait_done(c, generate(c, emulate={"outcome": "filtered", "duration_s": 0}))
    assert op.error is None and op.result.generated_videos is None
    assert op.result.rai_media_filtered_count == 1
    assert "safety filter" in op.result.rai_media_filtered_reasons[0]


def test_errors_are_the_sdks_own_exceptions(emulator):
    from google.genai import errors

    base, settings = emulator
    with pytest.raises(errors.ClientError) as wrong:
        generate(client(base, key="AIza-wrong"))
    assert wrong.value.code == 400 and wrong.value.status == "INVALID_ARGUMENT"
    assert wrong.value.message == "API key not valid. Please pass a valid API key."
    c = client(base)
    op = generate(c, emulate={"outcome": "expired", "duration_s": 0})
    with pytest.raises(errors.ClientError) as gone:
        c.operations.get(op)
    assert gone.value.code == 404 and gone.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as bad:
        generate(c, emulate={"outcome": "sideways"})
    assert bad.value.code == 400 and "_emulate" in bad.value.message
    settings.poll_429_rate = 1.0
    op = generate(c)
    with pytest.raises(errors.ClientError) as limited:
        c.operations.get(op)
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    assert limited.value.details["error"]["details"][0]["retryDelay"] == "1s"
    settings.poll_429_rate, settings.submit_503_rate = 0.0, 1.0
    with pytest.raises(errors.ServerError) as overloaded:
        generate(c)
    assert overloaded.value.code == 503 and overloaded.value.status == "UNAVAILABLE"


def test_the_wire_answers_like_google(emulator):
    """What the SDK hides: a missing key is 403, an unknown field 400, an unknown method 404,
    Retry-After on 429/503, and no cancel for a video operation."""
    base, settings = emulator
    url = f"{base}/v1beta/models/{MODEL}"
    headers = {"x-goog-api-key": KEY}
    body = {"instances": [{"prompt": "otters"}], "parameters": {"aspectRatio": "16:9"}}
    missing = httpx.post(f"{url}:predictLongRunning", json=body)
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    unknown = httpx.post(f"{url}:predictLongRunning", json=body | {"prompt": "x"}, headers=headers)
    assert unknown.status_code == 400
    assert 'Unknown name "prompt"' in unknown.json()["error"]["message"]
    empty = httpx.post(f"{url}:predictLongRunning", json={"instances": []}, headers=headers)
    assert empty.status_code == 400
    name = httpx.post(f"{url}:predictLongRunning", json=body, params={"key": KEY}).json()["name"]
    cancel = httpx.post(f"{base}/v1beta/{name}:cancel", headers=headers)
    assert cancel.status_code == 404 and cancel.json()["error"]["status"] == "NOT_FOUND"
    assert httpx.get(url, headers=headers).json()["name"] == f"models/{MODEL}"
    settings.poll_503_rate = 1.0
    busy = httpx.get(f"{base}/v1beta/{name}", headers=headers)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"


def test_dynamic_webhook_gets_the_event_when_the_video_is_done(emulator):
    """`webhook_config` as the SDK sends it (snake_case keys, which Google's JSON accepts):
    a video.generated event reaches every URI once the operation is done."""
    from google.genai import types
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    events: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        events.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    base, _ = emulator
    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hooks:
        c = client(base)
        config = types.GenerateVideosConfig(
            webhook_config=types.WebhookConfig(uris=[f"{hooks}/hook"], user_metadata={"job": 7})
        )
        op = c.models.generate_videos(
            model=MODEL, source=types.GenerateVideosSource(prompt="otters"), config=config
        )
        op, _ = wait_done(c, op)
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            time.sleep(0.02)
    headers, body = events[0]
    event = orjson.loads(body)
    assert event["type"] == "video.generated" and event["data"]["id"] == op.name
    assert event["data"]["user_metadata"] == {"job": 7}
    assert event["data"]["video_uri"] == op.result.generated_videos[0].video.uri
    assert headers["webhook-id"].startswith("msg_") and len(events) == 1
