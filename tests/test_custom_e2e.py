"""The custom adapters end to end, through the HTTP API: Runway and Stability configured from
YAML text alone (tests/upstreams/test_custom.py), each against its emulator on 127.0.0.1
behind a fault injector, with the suite's Valkey, a bridge under uvicorn and a receiver."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from standardwebhooks.webhooks import Webhook

from bridge.api.serving import RunningServer, start_server
from bridge.config import load_config
from bridge.dev.emulators import runway, stability
from bridge.dev.emulators.common import EmulatorSettings, EmulatorState
from bridge.obs.logs import configure_logging
from tests.conftest import ENV, FAST_POLL, SECRET, UPSTREAM_TOKEN
from tests.upstreams.contract import FaultInjector
from tests.upstreams.test_custom import (
    PNG_B64,
    RUNWAY_YAML,
    STABILITY_YAML,
    _runway_step,
    _stability_step,
)

RUNWAY_INPUTS = {"model": "gen4_turbo", "promptImage": "https://x.test/a.png", "ratio": "1280:720"}
STABILITY_INPUTS = {"image": PNG_B64, "prompt": "a sharp cat", "seed": 42}


@dataclass
class Emulated:
    name: str
    state: EmulatorState
    faults: FaultInjector
    server: RunningServer
    inputs: dict[str, Any]

    def with_knobs(self, **knobs: Any) -> dict[str, Any]:
        return {**self.inputs, "_emulate": {"duration_s": 0.2, **knobs}}


@pytest.fixture
async def emulated() -> AsyncIterator[dict[str, Emulated]]:
    out = {}
    for name, module, step_of, inputs in [
        ("runway", runway, _runway_step, RUNWAY_INPUTS),
        ("stability", stability, _stability_step, STABILITY_INPUTS),
    ]:
        app = module.create_emulator_app(EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN))
        faults = FaultInjector(app, step_of)
        out[name] = Emulated(name, app.state.emulator, faults, await start_server(faults), inputs)
    yield out
    for e in out.values():
        await e.server.stop()


def _upstream(text: str, url: str, **changes: Any) -> dict[str, Any]:
    """An upstream of the config from its YAML text, polling fast for the tests."""
    raw = yaml.safe_load(text.replace("URL", url))
    return {**raw, "token_env": "UPSTREAM_TOKEN", "poll": dict(FAST_POLL), **changes}


@pytest.fixture
async def stack(make_stack, emulated):
    async def make(**overrides: Any):
        return await make_stack(
            upstreams__runway=_upstream(RUNWAY_YAML, emulated["runway"].server.url),
            upstreams__stability=_upstream(STABILITY_YAML, emulated["stability"].server.url),
            **overrides,
        )

    return make


PROVIDERS = ["runway", "stability"]


@pytest.mark.parametrize("name", PROVIDERS)
async def test_success_delivers_the_mapped_result(stack, emulated, name):
    s, e = await stack(), emulated[name]
    r = await s.submit(upstream=name, inputs=e.with_knobs())
    assert r.status_code == 202, r.text
    event = await s.event()
    d = s.receiver.succeeded()[0]
    Webhook(SECRET).verify(d.body, d.headers)
    assert event["type"] == "job.completed"
    result, upstream_id = event["data"]["result"], event["data"]["upstream_id"]
    if name == "runway":  # output: the list of URLs
        assert result == [f"{e.server.url}/_emulator/outputs/{upstream_id}/0.mp4"]
        headers = e.faults.requests[0][1]
        assert headers["x-runway-version"] == "2024-11-06"
    else:  # the whole 200 answer, asked as JSON
        assert result["finish_reason"] == "SUCCESS" and result["seed"] == 42
        assert base64.b64decode(result["image"]).startswith(stability.PNG)
        assert e.state.futures[upstream_id].inputs["prompt"] == "a sharp cat"
    assert all(h["authorization"] == f"Bearer {UPSTREAM_TOKEN}" for _, h in e.faults.requests)


@pytest.mark.parametrize("name", PROVIDERS)
async def test_provider_failure_carries_its_message(stack, emulated, name):
    s, e = await stack(), emulated[name]
    await s.submit(upstream=name, inputs=e.with_knobs(outcome="failed"))
    event = await s.event()
    assert event["type"] == "job.failed"
    error = event["data"]["error"]
    assert error["code"] == "upstream-failed"
    expected = runway.FAILURE if name == "runway" else stability.MODERATION
    assert error["message"] == expected


@pytest.mark.parametrize("name", PROVIDERS)
async def test_expired_at_the_provider_is_upstream_expired(stack, emulated, name):
    s, e = await stack(), emulated[name]
    await s.submit(upstream=name, inputs=e.with_knobs(outcome="expired", duration_s=0.1))
    error = (await s.event())["data"]["error"]
    assert error["code"] == "upstream-expired" and error["upstream_status"] == 404


async def test_cancel_reaches_runway_and_stays_here_for_stability(stack, emulated):
    s = await stack()
    ids = {}
    for name in PROVIDERS:
        r = await s.submit(upstream=name, inputs=emulated[name].with_knobs(duration_s=30))
        ids[name] = r.json()["id"]
    for name in PROVIDERS:
        job = await s.job(ids[name])
        for _ in range(50):  # submitted: it has its provider's id
            if job["upstream_id"]:
                break
            await asyncio.sleep(0.05)
            job = await s.job(ids[name])
        cancelled = await s.client.delete(f"/v1/jobs/{ids[name]}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    task = emulated["runway"].state.futures[(await s.job(ids["runway"]))["upstream_id"]]
    assert task.outcome == "cancelled"  # DELETE /v1/tasks/{id} reached Runway
    assert emulated["runway"].state.requests["cancel"] == 1
    assert "cancel" not in emulated["stability"].state.requests  # Stability has none
    await asyncio.sleep(0.3)
    assert s.receiver.deliveries == []  # a cancelled job has no callback


@pytest.mark.parametrize("name", PROVIDERS)
async def test_429_retry_after_is_honoured(stack, emulated, name):
    s, e = await stack(), emulated[name]
    e.state.settings.poll_429_rate, e.state.settings.retry_after_s = 1.0, 1
    await s.submit(upstream=name, inputs=e.with_knobs())
    await asyncio.sleep(1.4)
    # the first poll at 0.05 s answered 429 with Retry-After: 1 → the next waits ≥ 1 s
    assert e.state.requests["poll"] == 2
    e.state.settings.poll_429_rate = 0.0
    assert (await s.event())["type"] == "job.completed"


MALFORMED = {
    "runway": [
        (200, b"<html>"),  # not JSON
        (200, b'{"id": "x"}'),  # no status
        (200, b'{"status": "SUCCEEDED"}'),  # completed without output
        (200, b'{"status": "WARMING_UP"}'),  # unknown: running
    ],
    "stability": [(200, b"<html>"), (200, b'["not", "an", "image"'), (201, b"{}")],
}


@pytest.mark.parametrize("name", PROVIDERS)
async def test_malformed_answers_are_retried_never_a_crash(stack, emulated, name):
    s, e = await stack(), emulated[name]
    e.faults.plan("submit", 200, b"{not json", None)
    for status, body in MALFORMED[name]:
        e.faults.plan("poll", status, body, None)
    r = await s.submit(upstream=name, inputs=e.with_knobs(duration_s=0.4))
    assert r.status_code == 202 and r.json()["status"] == "queued"  # retried in background
    event = await s.event()
    assert event["type"] == "job.completed" and event["data"]["result"]
    assert e.state.requests["submit"] == 1  # the malformed answer never reached the emulator


@pytest.mark.parametrize("name", PROVIDERS)
async def test_wrong_token_is_rejected_clearly_and_never_logged(stack, emulated, name):
    e = emulated[name]
    e.state.settings.token = "the-providers-other-key"
    buf = io.StringIO()
    configure_logging("json", "debug", stream=buf)
    try:
        s = await stack()
        await asyncio.sleep(0.5)  # the health watcher has asked the provider with that token
        r = await s.submit(upstream=name, inputs=e.with_knobs())
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["code"] == "upstream-rejected" and problem["upstream_status"] == 401
        assert "missing or invalid token" in problem["upstream_body"]
        job = await s.job(problem["job_id"])
        assert job["status"] == "failed" and job["error"]["code"] == "upstream-rejected"
    finally:
        configure_logging("json", "info")
    logs = buf.getvalue()
    assert '"event": "job failed"' in logs and '"code": "upstream-rejected"' in logs
    assert UPSTREAM_TOKEN not in logs and "the-providers-other-key" not in logs
    assert UPSTREAM_TOKEN not in r.text


def test_config_example_holds_both_adapters_as_tested(tmp_path):
    """config.example.yaml shows Runway and Stability with the adapters these tests run."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    env = {"RUNWAYML_API_SECRET": "k", "STABILITY_API_KEY": "k"}
    config = load_config(example, env)
    for name, text in [("runway", RUNWAY_YAML), ("stability-upscale", STABILITY_YAML)]:
        tested = yaml.safe_load(text)["adapter"]
        shown = config.upstreams[name]
        assert shown.protocol == "custom"
        assert shown.adapter.model_dump() == type(shown.adapter).model_validate(tested).model_dump()


async def test_check_verifies_a_custom_upstreams_token_by_its_health_request(tmp_path, valkey):
    """`pushbridge check` runs the adapter's health request, which carries the token the
    adapter's way: accepted, or reported refused."""
    import os
    import sys

    from bridge.store.embedded import EmbeddedValkey
    from tests.conftest import base_config

    emu = await start_server(runway.create_emulator_app(EmulatorSettings(token=UPSTREAM_TOKEN)))
    try:
        with EmbeddedValkey(tmp_path / "aof") as persistent:
            raw = base_config(emu.url)
            raw["store"]["url"] = persistent.url
            raw["upstreams"] = {"runway": _upstream(RUNWAY_YAML, emu.url)}
            path = tmp_path / "config.yaml"
            path.write_text(yaml.safe_dump(raw))
            outs = []
            for token in (UPSTREAM_TOKEN, "an-old-key"):
                env = {**os.environ, **ENV, "UPSTREAM_TOKEN": token}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bridge", "check", "--config", str(path),
                    env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
                outs.append((proc.returncode, out.decode()))
    finally:
        await emu.stop()
    (good_code, good), (bad_code, bad) = outs
    assert good_code == 0, good
    assert f"ok    upstream runway ({emu.url}): health answered 200" in good
    assert bad_code == 1
    assert "error upstream runway token: refused" in bad and "answers 401" in bad
    assert "ok    upstream runway token: accepted" in good
    assert "an-old-key" not in bad and UPSTREAM_TOKEN not in good
