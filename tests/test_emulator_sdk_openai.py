"""The openai emulator is faithful: OpenAI's own SDK (openai 3.57.0) runs the background-mode
flow of the Responses API on it (create, poll, result, failure, cancel, errors)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.dev.emulators.openai import EmulatorSettings, create_emulator_app
from tests.sdk_support import offline, serve

TOKEN = "sk-emulator-token"


@pytest.fixture
def emulator(monkeypatch) -> Iterator[tuple[str, EmulatorSettings]]:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    settings = EmulatorSettings(duration_s=0.4, token=TOKEN, future_ttl_s=600)
    with offline(monkeypatch) as outside, serve(create_emulator_app(settings)) as url:
        yield url, settings
    assert outside == [], outside  # nothing tried to leave 127.0.0.1


def client(base: str, token: str = TOKEN, **kwargs: Any):
    from openai import OpenAI

    return OpenAI(api_key=token, base_url=f"{base}/v1", **kwargs)


def wait_done(c, response_id: str):
    seen = []
    while True:
        r = c.responses.retrieve(response_id)
        seen.append(r.status)
        if r.status not in ("queued", "in_progress"):
            return r, seen
        time.sleep(0.03)


def test_background_flow_with_the_real_sdk(emulator):
    base, _ = emulator
    c = client(base)
    r = c.responses.create(
        model="gpt-5-mini",
        input="Write a haiku about otters.",
        background=True,
        metadata={"order": "17"},
    )
    assert r.id.startswith("resp_") and r.status == "queued" and r.background is True
    assert r.output == [] and r.output_text == ""
    done, seen = wait_done(c, r.id)
    assert "in_progress" in seen and seen[-1] == "completed"
    assert done.output_text == "She sells seashells by the seashore"  # the SDK's convenience
    assert done.output[0].type == "message" and done.output[0].role == "assistant"
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert done.metadata == {"order": "17"} and done.model == "gpt-5-mini"
    assert done.completed_at is not None and done.error is None
    # cancelling a finished response answers it as it is
    assert c.responses.cancel(r.id).status == "completed"


def test_failure_and_incomplete_as_the_sdk_reads_them(emulator):
    base, _ = emulator
    c = client(base)
    failed = c.responses.create(
        model="gpt-5-mini",
        input="x",
        background=True,
        extra_body={"_emulate": {"outcome": "failed", "duration_s": 0}},
    )
    r, _ = wait_done(c, failed.id)
    assert r.status == "failed"
    assert r.error.code == "server_error" and r.error.message == "emulated inference failure"
    short = c.responses.create(
        model="gpt-5-mini",
        input="x",
        background=True,
        extra_body={"_emulate": {"outcome": "incomplete", "duration_s": 0}},
    )
    r, _ = wait_done(c, short.id)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def test_cancel_a_running_background_response(emulator):
    base, _ = emulator
    c = client(base)
    r = c.responses.create(
        model="gpt-5-mini",
        input="x",
        background=True,
        extra_body={"_emulate": {"duration_s": 30}},
    )
    cancelled = c.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert c.responses.retrieve(r.id).status == "cancelled"
    assert c.responses.cancel(r.id).status == "cancelled"  # twice: the same answer


def test_foreground_create_waits_and_cannot_be_cancelled(emulator):
    import openai

    base, _ = emulator
    c = client(base)
    r = c.responses.create(
        model="gpt-5-mini", input="x", extra_body={"_emulate": {"duration_s": 0.1}}
    )
    assert r.status == "completed" and r.background is False
    with pytest.raises(openai.BadRequestError, match="background=true"):
        c.responses.cancel(r.id)


def test_errors_are_the_sdks_own_exceptions(emulator):
    import openai

    base, settings = emulator
    with pytest.raises(openai.AuthenticationError) as auth:
        client(base, token="sk-wrong").responses.create(model="gpt-5-mini", input="x")
    assert auth.value.code == "invalid_api_key" and auth.value.type == "invalid_request_error"
    c = client(base, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not found"):
        c.responses.retrieve("resp_unknown")
    with pytest.raises(openai.BadRequestError) as bad:
        c.responses.create(model="gpt-5-mini", input="x", extra_body={"temperatur": 1})
    assert bad.value.code == "unknown_parameter" and bad.value.param == "temperatur"
    with pytest.raises(openai.BadRequestError) as missing:
        c.responses.create(input="x")
    assert missing.value.param == "model"
    settings.poll_429_rate = 1.0
    r = c.responses.create(model="gpt-5-mini", input="x", background=True)
    with pytest.raises(openai.RateLimitError) as limited:
        c.responses.retrieve(r.id)
    assert limited.value.response.headers["retry-after"] == str(settings.retry_after_s)
    settings.poll_429_rate, settings.submit_503_rate = 0.0, 1.0
    with pytest.raises(openai.InternalServerError) as overloaded:
        c.responses.create(model="gpt-5-mini", input="x", background=True)
    assert overloaded.value.status_code == 503
    assert "retry-after" in overloaded.value.response.headers


def test_sdk_honours_retry_after(emulator):
    import openai

    base, settings = emulator
    c = client(base, max_retries=1)
    r = c.responses.create(model="gpt-5-mini", input="x", background=True)
    settings.poll_429_rate, settings.retry_after_s = 1.0, 1
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        c.responses.retrieve(r.id)
    assert time.monotonic() - started >= 0.9  # waited the Retry-After once, then gave up
    stats = httpx.get(f"{base}/_emulator/stats").json()
    assert stats["requests"]["poll"] == 2


def test_expired_and_deleted_responses_are_404(emulator):
    import openai

    base, _ = emulator
    c = client(base)
    gone = c.responses.create(
        model="gpt-5-mini",
        input="x",
        background=True,
        extra_body={"_emulate": {"outcome": "expired", "duration_s": 0}},
    )
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(gone.id)
    r = c.responses.create(model="gpt-5-mini", input="x", background=True)
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_unknown_path_answers_openais_404(emulator):
    import openai

    base, _ = emulator
    c = client(base)
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        c.post("/respones", body={}, cast_to=object)
    assert [m.id for m in c.models.list()] == ["gpt-5-mini"]
