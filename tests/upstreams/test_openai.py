"""The openai upstream (Responses API, background mode): the contract suite against the openai
emulator, then whole jobs through the HTTP API (result, failure, cancel, expiry, 429,
malformed answers, a wrong token)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from bridge.config import ConfigError, OpenAIUpstreamConfig, PollConfig, parse_config
from bridge.dev.emulators.openai import EmulatorSettings, create_emulator_app
from bridge.net.client import LeanClient
from bridge.upstreams.openai import OpenAIUpstream
from tests.conftest import UPSTREAM_TOKEN, base_config
from tests.upstreams.checks import check_lines
from tests.upstreams.contract import (
    JOB_S,
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
)

MODEL = "gpt-5-mini"


def openai_step(method: str, path: str) -> str | None:
    """The protocol step of a request to the openai emulator."""
    if path == "/v1/responses" and method == "POST":
        return "submit"
    if path.startswith("/v1/responses/"):
        return "cancel" if path.endswith("/cancel") else "poll"
    return "health" if path == "/v1/models" else None


def job_inputs(duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
    return {
        "model": MODEL,
        "input": "Write a haiku about otters.",
        "metadata": {"n": secrets.token_hex(4)},
        "_emulate": {"duration_s": duration_s, "outcome": outcome},
    }


class OpenAIProvider(EmulatedProvider):
    """The openai emulator behind a fault injector."""

    def __init__(self) -> None:
        super().__init__(create_emulator_app, openai_step, future_ttl_s=600)

    def upstream(self, client: LeanClient, base_url: str | None = None) -> OpenAIUpstream:
        config = OpenAIUpstreamConfig(
            protocol="openai",
            url=f"{base_url or self.url}/v1",
            submit_timeout_s=2,
            poll=PollConfig(timeout_s=2),
        )
        return OpenAIUpstream("oa", config, TOKEN, client)

    def inputs(self, duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
        return job_inputs(duration_s, outcome)

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        text = result["output"][0]["content"][0]["text"]
        return (
            result["object"] == "response"
            and result["status"] == "completed"
            and result["metadata"] == inputs["metadata"]
            and bool(text)
        )


class TestOpenAIContract(UpstreamContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[OpenAIProvider]:
        async with served(OpenAIProvider()) as p:
            yield p

    async def test_background_is_added_and_a_refused_token_is_still_healthy(self, up, provider):
        outcome = await up.submit({"model": MODEL, "input": "x", "background": False})
        state = provider.state
        assert state.futures[outcome.ref.id].inputs["background"] is True
        provider.settings.token = "another-token"
        health = await up.health()
        assert health.status_code == 401 and "refuses the token" in health.detail


# ---- through the HTTP API --------------------------------------------------------------


def _echo(emulator_url: str) -> dict[str, Any]:
    return {"protocol": "openai", "url": f"{emulator_url}/v1", "health_url": None}


@pytest.fixture
def openai_stack(make_stack) -> Callable[..., Any]:
    async def make(token: str = UPSTREAM_TOKEN, **settings: Any):
        emulator = EmulatorSettings(**{"duration_s": 0.2, "token": token, **settings})
        s = await make_stack(emulator, protocol="openai", upstream=_echo, faults=openai_step)
        return s, emulator, s.faults

    return make


async def test_job_completes_with_the_whole_response_object(openai_stack):
    s, _, _ = await openai_stack()
    inputs = job_inputs(0.2)
    r = await s.submit(inputs=inputs)
    assert r.status_code == 202 and r.json()["status"] == "running", r.text
    event = await s.event()
    assert event["type"] == "job.completed"
    result = event["data"]["result"]
    assert result["object"] == "response" and result["status"] == "completed"
    assert result["id"] == event["data"]["upstream_id"] and result["background"] is True
    assert result["output"][0]["content"][0]["text"] == "She sells seashells by the seashore"
    assert result["metadata"] == inputs["metadata"]
    sent = s.emulator.futures[result["id"]].inputs
    assert sent == {**inputs, "background": True}


async def test_failure_carries_openais_message(openai_stack):
    s, _, _ = await openai_stack()
    r = await s.submit(inputs=job_inputs(0.1, "failed"))
    assert r.status_code == 202
    event = await s.event()
    assert event["type"] == "job.failed"
    assert event["data"]["error"]["code"] == "upstream-failed"
    assert event["data"]["error"]["message"] == "emulated inference failure"


async def test_cancel_reaches_openai(openai_stack):
    s, _, _ = await openai_stack()
    r = await s.submit(inputs=job_inputs(30))
    job_id = r.json()["id"]
    upstream_id = (await s.job(job_id))["upstream_id"]
    d = await s.client.delete(f"/v1/jobs/{job_id}")
    assert d.status_code == 200 and d.json()["status"] == "cancelled"
    state = s.emulator
    assert state.requests["cancel"] == 1 and state.futures[upstream_id].outcome == "cancelled"
    await asyncio.sleep(0.3)
    assert s.receiver.deliveries == []  # no callback for a cancelled job


async def test_expired_response_fails_with_upstream_expired(openai_stack):
    s, _, _ = await openai_stack()
    r = await s.submit(inputs=job_inputs(0.1, "expired"))
    assert r.status_code == 202
    error = (await s.event())["data"]["error"]
    assert error["code"] == "upstream-expired" and error["upstream_status"] == 404
    assert "kept ~10 min" in error["message"]


async def test_429_is_retried_after_retry_after(openai_stack):
    s, emulator, _ = await openai_stack(poll_429_rate=1.0, retry_after_s=1)
    r = await s.submit(inputs=job_inputs(0.1))
    await asyncio.sleep(1.5)
    polls = s.emulator.requests["poll"]
    assert 1 <= polls <= 3, polls  # every 50-300 ms without Retry-After
    job = await s.rt.store.get_job(r.json()["id"])
    assert job is not None and job.status == "running" and "429" in (job.last_error or "")
    emulator.poll_429_rate = 0.0
    assert (await s.event())["type"] == "job.completed"


async def test_malformed_answers_are_retried(openai_stack):
    s, _, app = await openai_stack()
    app.plan("submit", 200, b"<html>busy</html>", None)
    for body in (b"{not json", b'{"status": 5}', b"[]"):
        app.plan("poll", 200, body, None)
    r = await s.submit(inputs=job_inputs(0.1))
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    event = await s.event()
    assert event["type"] == "job.completed" and event["data"]["result"]["status"] == "completed"
    assert app.planned["poll"] == [] and s.emulator.requests["submit"] == 1


async def test_wrong_token_fails_upstream_rejected_and_is_never_logged(openai_stack, capfd):
    s, _, _ = await openai_stack(token="sk-the-right-one")
    r = await s.submit(inputs=job_inputs(0.1))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "upstream-rejected" and body["upstream_status"] == 401
    job = await s.job(body["job_id"])
    assert job["status"] == "failed" and job["error"]["message"] == "Incorrect API key provided."
    out, err = capfd.readouterr()
    assert UPSTREAM_TOKEN not in out + err + orjson.dumps(job).decode()


async def test_non_object_inputs_never_reach_openai(openai_stack):
    s, _, _ = await openai_stack()
    r = await s.submit(inputs=["not", "an", "object"])
    assert r.status_code == 400 and r.json()["code"] == "invalid-request", r.text
    assert s.emulator.requests["submit"] == 0


# ---- configuration -----------------------------------------------------------------------


def test_config_defaults_overrides_and_protocol_errors():
    raw = base_config("http://127.0.0.1:1", upstreams={"oa": {"protocol": "openai"}})
    config = parse_config(raw, {"PUSHBRIDGE_UPSTREAMS__OA__RATE_LIMIT__POLL_PER_S": "20"})
    oa = config.upstreams["oa"]
    assert isinstance(oa, OpenAIUpstreamConfig) and oa.url == "https://api.openai.com/v1"
    assert oa.rate_limit.submit_per_s == pytest.approx(500 / 60)  # kept beside the override
    assert oa.rate_limit.poll_per_s == 20
    with pytest.raises(ConfigError, match=r"unknown key of upstreams\.oa\.rate_limit 'pol_per_s'"):
        parse_config(raw, {"PUSHBRIDGE_UPSTREAMS__OA__RATE_LIMIT__POL_PER_S": "20"})
    raw["upstreams"]["oa"]["protocol"] = "openia"
    with pytest.raises(
        ConfigError, match=r"upstreams\.oa\.protocol: unknown protocol; .*, openai, gemini"
    ):
        parse_config(raw, {})


async def test_check_tries_the_token_on_the_model_list(openai_stack):
    """check tried the token with GET {url}, which OpenAI answers 404 with or without it:
    never verified. The model list needs the token."""
    s, _, _ = await openai_stack()
    gpt = s.config.upstreams["echo"].model_dump(mode="json")
    errors, out = await check_lines(gpt, UPSTREAM_TOKEN)
    assert errors == 0 and "token: accepted" in out and "/v1/models: 200 with it" in out, out
    errors, out = await check_lines(gpt, "sk-wrong")
    assert errors == 1 and "token: refused" in out and "answers 401" in out, out
