"""The gemini upstream (long-running operations of the Gemini API, Veo): the contract suite
against the gemini emulator, then whole jobs through the HTTP API (result, failure, the
safety filter, cancel here only, expiry, 429 with RetryInfo, malformed answers, a wrong key)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from bridge.config import ConfigError, GeminiUpstreamConfig, PollConfig, parse_config
from bridge.dev.emulators.gemini import EmulatorSettings, create_emulator_app
from bridge.net.client import LeanClient
from bridge.upstreams.gemini import GeminiUpstream, retry_delay_s
from bridge.upstreams.httpjson import Answer
from tests.conftest import UPSTREAM_TOKEN, base_config
from tests.upstreams.checks import check_lines
from tests.upstreams.contract import (
    JOB_S,
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
)

MODEL = "veo-3.1-generate-preview"
RETRY_INFO = b"""{"error": {"code": 429, "message": "Resource has been exhausted.",
 "status": "RESOURCE_EXHAUSTED", "details": [
 {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}}"""


def gemini_step(method: str, path: str) -> str | None:
    """The protocol step of a request to the gemini emulator."""
    if method == "POST" and path.endswith(":predictLongRunning"):
        return "submit"
    if "/operations/" in path:
        return "cancel" if path.endswith(":cancel") else "poll"
    if path.startswith("/v1beta/files/"):
        return "result"
    return "health" if path.startswith("/v1beta/models/") else None


def job_inputs(duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
    prompt = f"A neon hologram of a cat, take {secrets.token_hex(4)}"
    return {
        "instances": [{"prompt": prompt}],
        "parameters": {"aspectRatio": "16:9", "sampleCount": 1},
        "_emulate": {"duration_s": duration_s, "outcome": outcome},
    }


class GeminiProvider(EmulatedProvider):
    """The gemini emulator behind a fault injector."""

    def __init__(self) -> None:
        super().__init__(create_emulator_app, gemini_step)

    def upstream(self, client: LeanClient, base_url: str | None = None) -> GeminiUpstream:
        config = GeminiUpstreamConfig(
            protocol="gemini",
            url=f"{base_url or self.url}/v1beta/models/{MODEL}",
            submit_timeout_s=2,
            poll=PollConfig(timeout_s=2),
        )
        return GeminiUpstream("veo", config, TOKEN, client)

    def inputs(self, duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
        return job_inputs(duration_s, outcome)

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        samples = result["generateVideoResponse"]["generatedSamples"]
        return len(samples) == 1 and "/v1beta/files/" in samples[0]["video"]["uri"]

    def carries_token(self, headers: dict[str, str]) -> bool:
        return headers.get("x-goog-api-key") == TOKEN and "authorization" not in headers


class TestGeminiContract(UpstreamContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[GeminiProvider]:
        async with served(GeminiProvider()) as p:
            yield p

    async def test_googles_retry_info_is_honoured(self, up, provider):
        provider.inject("submit", 429, RETRY_INFO)
        outcome = await up.submit(provider.inputs())
        assert outcome.retry_after_s == 7.0 and "Resource has been exhausted" in outcome.reason
        provider.inject("submit", 429, RETRY_INFO, {"Retry-After": "3"})
        assert (await up.submit(provider.inputs())).retry_after_s == 3.0  # the header wins

    async def test_a_refused_key_is_still_healthy(self, up, provider):
        provider.settings.token = "another-key"
        health = await up.health()
        assert health.status_code == 400 and "refuses the key" in health.detail

    async def test_an_operation_name_from_the_provider_is_not_a_url(self, up, provider):
        provider.inject("submit", 200, b'{"name": "https://evil.test/operations/x"}')
        assert (await up.submit(provider.inputs())).reason.startswith("malformed operation")


def test_retry_delay_reads_only_retry_info():
    assert retry_delay_s(RETRY_INFO) == 7.0
    assert retry_delay_s(b'{"error": {"details": [{"retryDelay": "7s"}]}}') is None
    assert retry_delay_s(b"<html>") is None
    assert retry_delay_s(RETRY_INFO.replace(b'"7s"', b'"99999s"')) == 3600.0
    assert Answer(200, b"{}", None).json_object() == {}


# ---- through the HTTP API --------------------------------------------------------------


def _echo(emulator_url: str) -> dict[str, Any]:
    url = f"{emulator_url}/v1beta/models/{MODEL}"
    return {
        "protocol": "gemini",
        "url": url,
        "health_url": None,
        "rate_limit": {"submit_per_s": 100},
    }


@pytest.fixture
def gemini_stack(make_stack) -> Callable[..., Any]:
    async def make(token: str = UPSTREAM_TOKEN, **settings: Any):
        emulator = EmulatorSettings(**{"duration_s": 0.2, "token": token, **settings})
        s = await make_stack(emulator, protocol="gemini", upstream=_echo, faults=gemini_step)
        return s, emulator, s.faults

    return make


async def test_job_completes_with_the_operations_response(gemini_stack):
    s, _, _ = await gemini_stack()
    inputs = job_inputs(0.2)
    r = await s.submit(inputs=inputs)
    assert r.status_code == 202 and r.json()["status"] == "running", r.text
    event = await s.event()
    assert event["type"] == "job.completed"
    assert event["data"]["upstream_id"].startswith(f"models/{MODEL}/operations/")
    result = event["data"]["result"]
    assert result["@type"].endswith("PredictLongRunningResponse")
    uri = result["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    assert uri.startswith(s.rt.upstreams["echo"].api_root + "/files/")  # type: ignore[attr-defined]
    assert s.emulator.futures[event["data"]["upstream_id"]].inputs == inputs


async def test_failure_and_the_safety_filter_carry_googles_message(gemini_stack):
    s, _, _ = await gemini_stack()
    await s.submit(inputs=job_inputs(0.1, "failed"))
    await s.submit(inputs=job_inputs(0.1, "filtered"))
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 2, 10)
    errors = sorted(d.event["data"]["error"]["message"] for d in s.receiver.succeeded())
    assert all(d.event["type"] == "job.failed" for d in s.receiver.succeeded())
    assert errors[0].startswith("blocked by Google's safety filter: Your prompt could not")
    assert errors[1] == "emulated inference failure"


async def test_cancel_stays_here_no_request_to_google(gemini_stack):
    s, _, app = await gemini_stack()
    r = await s.submit(inputs=job_inputs(30))
    d = await s.client.delete(f"/v1/jobs/{r.json()['id']}")
    assert d.status_code == 200 and d.json()["status"] == "cancelled"
    await asyncio.sleep(0.3)
    assert app.requests and not [h for step, h in app.requests if step == "cancel"]
    assert s.receiver.deliveries == []


async def test_expired_operation_fails_with_upstream_expired(gemini_stack):
    s, _, _ = await gemini_stack()
    await s.submit(inputs=job_inputs(0.1, "expired"))
    error = (await s.event())["data"]["error"]
    assert error["code"] == "upstream-expired" and error["upstream_status"] == 404
    assert "Gemini no longer has operation models/" in error["message"]


async def test_429_is_retried_after_googles_retry_info(gemini_stack):
    s, _, app = await gemini_stack()
    r = await s.submit(inputs=job_inputs(0.1))
    app.plan("poll", 429, RETRY_INFO.replace(b'"7s"', b'"1s"'), None)
    await asyncio.sleep(0.6)
    job = await s.rt.store.get_job(r.json()["id"])
    assert job is not None and job.status == "running" and "429" in (job.last_error or "")
    polls = len([1 for step, _ in app.requests if step == "poll"])
    assert polls == 1, polls  # waits the 1 s RetryInfo delay, not the 50 ms min interval
    assert (await s.event())["type"] == "job.completed"


async def test_malformed_answers_are_retried(gemini_stack):
    s, _, app = await gemini_stack()
    app.plan("submit", 200, b'{"name": 17}', None)
    for body in (b"{not json", b'{"done": true}', b"[]"):
        app.plan("poll", 200, body, None)
    r = await s.submit(inputs=job_inputs(0.1))
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    event = await s.event()
    assert event["type"] == "job.completed" and app.planned["poll"] == []


async def test_wrong_key_fails_upstream_rejected_and_is_never_logged(gemini_stack, capfd):
    s, _, _ = await gemini_stack(token="AIza-the-right-one")
    r = await s.submit(inputs=job_inputs(0.1))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "upstream-rejected" and body["upstream_status"] == 400
    job = await s.job(body["job_id"])
    assert job["error"]["message"] == "API key not valid. Please pass a valid API key."
    out, err = capfd.readouterr()
    assert UPSTREAM_TOKEN not in out + err + orjson.dumps(job).decode()


def test_config_needs_the_model_url_and_keeps_the_default_limit():
    raw = base_config("http://127.0.0.1:1", upstreams={"veo": {"protocol": "gemini"}})
    with pytest.raises(ConfigError, match=r"upstreams\.veo\.url: Field required"):
        parse_config(raw, {})
    raw["upstreams"]["veo"]["url"] = (
        f"https://generativelanguage.googleapis.com/v1beta/models/{MODEL}"
    )
    raw["upstreams"]["veo"]["rate_limit"] = {"poll_per_s": 2}
    veo = parse_config(raw, {}).upstreams["veo"]
    assert isinstance(veo, GeminiUpstreamConfig)
    assert veo.rate_limit.submit_per_s == pytest.approx(10 / 60) and veo.rate_limit.poll_per_s == 2


async def test_check_tries_the_key_the_way_google_takes_it(gemini_stack):
    """check sent every token as a Bearer header and took 401/403 for refused: a good Gemini
    key was reported refused (Google answers a Bearer it cannot use 403) and a wrong one
    (400 API_KEY_INVALID) was never noticed."""
    s, _, _ = await gemini_stack()
    veo = s.config.upstreams["echo"].model_dump(mode="json")
    errors, out = await check_lines(veo, UPSTREAM_TOKEN)
    assert errors == 0 and "upstream u token: accepted" in out and "403 without)" in out, out
    errors, out = await check_lines(veo, "AIza-wrong")
    assert errors == 1 and "upstream u token: refused" in out and "answers 400" in out, out
    assert UPSTREAM_TOKEN not in out and "AIza-wrong" not in out
