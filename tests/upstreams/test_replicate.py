"""The replicate upstream: the contract suite against the replicate emulator, then what is
Replicate's own (model or version routes, push webhooks, its error words, data_removed,
aborted, the throttle's "resets in ~Ns", the token only to the configured origin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from bridge.config import ConfigError, PollConfig, ReplicateUpstreamConfig, parse_config
from bridge.dev.emulators.replicate import Prediction, create_emulator_app
from bridge.net.client import LeanClient, upstream_client
from bridge.upstreams import REGISTRY
from bridge.upstreams.base import (
    Cancelled,
    Done,
    Expired,
    Failed,
    Rejected,
    Running,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.replicate import ReplicateUpstream
from tests.upstreams.checks import check_verifies
from tests.upstreams.contract import (
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
)
from tests.upstreams.servers import Recorder

VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


def _replicate_step(method: str, path: str) -> str | None:
    if method == "POST" and path.endswith("/predictions"):
        return "submit"
    if method == "POST" and path.endswith("/cancel"):
        return "cancel"
    if method == "GET" and path.startswith("/v1/predictions/"):
        return "poll"
    return "health" if path == "/healthz" else None


class ReplicateProvider(EmulatedProvider):
    """The replicate emulator (bridge.dev.emulators.replicate) behind a fault injector."""

    def __init__(self) -> None:
        super().__init__(create_emulator_app, _replicate_step)

    def upstream(
        self, client: LeanClient, base_url: str | None = None, model: str = "acme/echo"
    ) -> ReplicateUpstream:
        base = base_url or self.url
        config = ReplicateUpstreamConfig(
            protocol="replicate",
            url=f"{base}/v1",
            model=model,
            health_url=f"{base}/healthz",
            submit_timeout_s=2,
            poll=PollConfig(timeout_s=2),
        )
        return ReplicateUpstream("r", config, TOKEN, client)

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        return result["echo"] == inputs and bool(result["text"])

    def prediction(self, prediction_id: str) -> Prediction:
        p = self.state.futures[prediction_id]
        assert isinstance(p, Prediction)
        return p


class TestReplicateContract(UpstreamContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[ReplicateProvider]:
        async with served(ReplicateProvider()) as p:
            yield p

    async def test_official_model_and_version_routes(self, provider: ReplicateProvider):
        inputs = {"prompt": "hi"}
        async with upstream_client() as client:
            by_model = await provider.upstream(client).submit(inputs)
            by_version = await provider.upstream(client, model=f"acme/echo:{VERSION}").submit(
                inputs
            )
        assert isinstance(by_model, Submitted) and isinstance(by_version, Submitted)
        assert by_model.status_code == by_version.status_code == 201
        p = provider.prediction(by_model.ref.id)
        assert (p.model, p.version, p.inputs) == ("acme/echo", "hidden", inputs)
        p = provider.prediction(by_version.ref.id)
        assert (p.version, p.inputs) == (VERSION, inputs)

    async def test_push_url_becomes_the_webhook(self, up, provider: ReplicateProvider):
        out = await up.submit(provider.inputs(duration_s=30), push_url="https://b.example/p/1")
        assert isinstance(out, Submitted)
        p = provider.prediction(out.ref.id)
        assert p.webhook == "https://b.example/p/1" and p.events == {"completed"}
        assert up.capabilities.push and up.capabilities.cancel

    async def test_cancel_reaches_replicate(self, up, provider: ReplicateProvider):
        ref = (await up.submit(provider.inputs(duration_s=30))).ref
        assert isinstance(await up.cancel(ref), Cancelled)
        assert provider.prediction(ref.id).canceled_at is not None
        polled = await up.poll(ref)
        assert isinstance(polled, Failed) and "canceled" in polled.message

    async def test_check_tries_the_token_on_the_account(self, provider: ReplicateProvider):
        """check tried the token with GET {url} (/v1: no route, 404 either way): never
        verified. GET /v1/account answers the token's account, or 401."""
        async with upstream_client() as client:
            config = provider.upstream(client).config
        sdxl = {**config.model_dump(mode="json"), "token_env": "REPLICATE_API_TOKEN"}
        accepted, refused = await check_verifies(sdxl, TOKEN, "r8_not-the-token")
        assert "/v1/account: 200" in accepted and "answers 401" in refused, refused

    async def test_wrong_token_is_rejected_with_replicates_words(self, provider):
        async with upstream_client() as client:
            up = ReplicateUpstream("r", provider.upstream(client).config, "not-the-token", client)
            out = await up.submit(provider.inputs())
        assert isinstance(out, Rejected) and out.status_code == 401
        assert "Unauthenticated: You did not pass a valid authentication token" in out.message
        assert "not-the-token" not in out.message

    async def test_problem_title_and_detail_become_the_message(self, up, provider):
        problem = {
            "title": "Input validation failed",
            "detail": "- input: prompt is required\n",
            "status": 422,
        }
        provider.inject("submit", 422, orjson.dumps(problem))
        out = await up.submit({"x": 1})
        assert isinstance(out, Rejected) and out.status_code == 422
        assert "Input validation failed: - input: prompt is required" in out.message

    async def test_throttle_without_retry_after_waits_what_the_detail_says(self, up, provider):
        throttled = b'{"detail":"Request was throttled. Your rate limit resets in ~30s."}'
        provider.inject("submit", 429, throttled)
        out = await up.submit(provider.inputs())
        assert isinstance(out, Transient) and out.retry_after_s == 30.0
        provider.inject("submit", 429, throttled, {"Retry-After": "4"})
        assert (await up.submit(provider.inputs())).retry_after_s == 4.0

    @pytest.mark.parametrize(
        ("status", "extra", "kind", "words"),
        [
            ("starting", {}, Running, ""),
            ("processing", {}, Running, ""),
            ("someday", {}, Running, ""),  # a status Replicate adds later: keep polling
            ("succeeded", {"output": None}, Done, ""),
            ("succeeded", {"output": None, "data_removed": True}, Expired, "1 hour"),
            ("failed", {"error": "NSFW content detected"}, Failed, "NSFW content detected"),
            ("failed", {"error": None}, Failed, "failed at Replicate"),
            ("canceled", {}, Failed, "canceled"),
            ("aborted", {}, Failed, "deadline passed before it started"),
        ],
    )
    async def test_statuses(self, up, provider, status, extra, kind, words):
        ref = (await up.submit(provider.inputs())).ref
        provider.inject("poll", 200, orjson.dumps({"id": ref.id, "status": status, **extra}))
        out = await up.poll(ref)
        assert isinstance(out, kind), out
        if isinstance(out, Failed | Expired):
            assert words in out.message
        if isinstance(out, Done):
            assert out.result == b"null"

    async def test_aborted_by_the_emulators_deadline(self, up, provider: ReplicateProvider):
        ref = (await up.submit(provider.inputs())).ref
        provider.prediction(ref.id).deadline = provider.prediction(ref.id).created_at
        provider.prediction(ref.id).started_at += 10
        out = await up.poll(ref)
        assert isinstance(out, Failed) and "aborted" in out.message

    @pytest.mark.parametrize(
        "answer",
        [b'{"status": "starting"}', b'{"id": "../../x", "status": "starting"}', b"[]", b"{"],
    )
    async def test_malformed_create_answers_are_transient(self, up, provider, answer):
        provider.inject("submit", 201, answer)
        assert isinstance(await up.submit(provider.inputs()), Transient)

    async def test_bad_inputs_and_refs_never_reach_replicate(self, up, provider):
        assert isinstance(await up.submit(["not", "an", "object"]), Rejected)
        assert isinstance(await up.poll(UpstreamRef("../admin")), Failed)
        assert isinstance(await up.cancel(UpstreamRef("a/b")), Rejected)
        assert provider.requests("submit") == provider.requests("poll") == []

    async def test_token_only_to_the_configured_origin(self, up, provider: ReplicateProvider):
        """The create answer's urls.get on another origin is not followed: polls go to the
        configured url, with the token; the other origin sees nothing."""
        other = await Recorder().start()
        try:
            body = {"id": "abc123", "status": "starting", "urls": {"get": f"{other.url}/p"}}
            provider.inject("submit", 201, orjson.dumps(body))
            out = await up.submit(provider.inputs())
            assert isinstance(out, Submitted) and out.ref == UpstreamRef("abc123")
            assert isinstance(await up.poll(out.ref), Expired)  # the emulator has no abc123
            assert provider.carries_token(provider.requests("poll")[-1])
            assert other.seen == []
        finally:
            await other.stop()


def test_config_and_registry():
    assert REGISTRY["replicate"] is ReplicateUpstream
    config = parse_config(
        {"upstreams": {"r": {"protocol": "replicate", "model": "acme/echo"}}}
    ).upstreams["r"]
    assert isinstance(config, ReplicateUpstreamConfig)
    assert config.url == "https://api.replicate.com/v1"
    assert (config.rate_limit.submit_per_s, config.rate_limit.poll_per_s) == (10.0, 50.0)
    one = {"protocol": "replicate", "model": "a/b", "rate_limit": {"poll_per_s": 5}}
    limits = parse_config({"upstreams": {"r": one}}).upstreams["r"].rate_limit
    assert (limits.submit_per_s, limits.poll_per_s) == (10.0, 5.0)
    for model, words in [("acme", "owner/name"), ("a/b:latest", "version id"), (None, "required")]:
        raw = {"protocol": "replicate", **({"model": model} if model else {})}
        with pytest.raises(ConfigError, match=rf"upstreams\.r\.model: .*{words}"):
            parse_config({"upstreams": {"r": raw}})


def test_environment_overrides_reach_replicates_own_keys():
    """With several protocols in the upstream union, an override of any protocol's key is
    known (it failed as "upstreams.w has no key ..." once the union had two members)."""
    env = {
        "PUSHBRIDGE_UPSTREAMS__R__MODEL": "acme/other",
        "PUSHBRIDGE_UPSTREAMS__R__POLL__DEADLINE_S": "60",
    }
    raw = {"upstreams": {"r": {"protocol": "replicate", "model": "acme/echo"}}}
    config = parse_config(raw, env).upstreams["r"]
    assert isinstance(config, ReplicateUpstreamConfig)
    assert config.model == "acme/other" and config.poll.deadline_s == 60
    with pytest.raises(ConfigError, match=r"unknown key of upstreams\.r 'modle'"):
        parse_config(raw, {"PUSHBRIDGE_UPSTREAMS__R__MODLE": "x"})
    with pytest.raises(ConfigError, match=r"upstreams\.w\.model: Extra inputs"):
        parse_config(
            {"upstreams": {"w": {"url": "http://w"}}}, {"PUSHBRIDGE_UPSTREAMS__W__MODEL": "a/b"}
        )
