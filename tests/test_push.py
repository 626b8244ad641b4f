"""Pushes from providers (CONTRACT §5b), provider-neutral: a test-only protocol (octoai's, with
per-job push switched on) against the octoai emulator; the test plays the provider's
callback, POSTing to the push URL pushbridge gave the job. Real bridges, real Valkey."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from bridge.config import ConfigError, parse_config, resolve_secrets
from bridge.engine.push import PushLinks
from bridge.engine.runtime import Runtime, build_runtime
from bridge.net.client import callback_client, upstream_client
from bridge.store import Store
from bridge.upstreams.base import Capabilities, SubmitOutcome, Submitted
from bridge.upstreams.octoai import OctoAIUpstream
from bridge.upstreams.webhooks import verify_standard_webhook
from tests.conftest import ENV, UPSTREAM_TOKEN, Stack, base_config
from tests.support.waiting import until

SLOW = {  # polls so slow that only a push explains a quick finish
    "upstreams__echo__poll__initial_delay_s": 20,
    "upstreams__echo__poll__min_interval_s": 20,
    "upstreams__echo__poll__max_interval_s": 20,
    "upstreams__echo__poll__adaptive": False,
}
PUSH_SECRET = "whsec_" + base64.b64encode(b"provider-push-secret-0123456789ab").decode()


class PushingOctoAI(OctoAIUpstream):
    """The octoai protocol with a per-job push, as replicate/runpod/fal have: the push URL
    pushbridge passes to submit is handed to `provider` (the test), which calls it."""

    capabilities: ClassVar[Capabilities] = Capabilities(push=True, separate_fetch=True)

    def __init__(self, *args: Any, provider: Provider, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.provider = provider

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        outcome = await super().submit(inputs, push_url)
        if isinstance(outcome, Submitted) and push_url:
            await self.provider.accepted(outcome.ref.id, push_url)
        return outcome


class SlowAnsweringPushOctoAI(PushingOctoAI):
    """Its polls' answers take 1.5 s to arrive (after the provider gave them)."""

    async def poll(self, ref: Any) -> Any:
        outcome = await super().poll(ref)
        await asyncio.sleep(1.5)
        return outcome


class SigningPushOctoAI(PushingOctoAI):
    def verify_push(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        return verify_standard_webhook(secret, headers, body)


class Provider:
    """What a provider that calls back does: POST the push URL once the job is done (or
    `early`, or before its submit answer is even sent: `before_answer`), with a body of
    its own (which pushbridge must not trust)."""

    def __init__(self, stack: Stack, base_url: str | None = None) -> None:
        self.stack = stack
        self.base_url = base_url  # where pushes go (default: the URL pushbridge gave)
        self.urls: dict[str, str] = {}  # upstream id -> push URL
        self.answers: list[int] = []
        self.drop: set[str] = set()  # upstream ids whose push is lost
        self.early = False
        self.before_answer = False
        self.body: dict[str, Any] = {"status": "succeeded", "output": "FORGED"}
        self.secret: str | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def accepted(self, upstream_id: str, push_url: str) -> None:
        self.urls[upstream_id] = push_url
        if self.before_answer:
            await self.push(upstream_id)
        else:
            self.tasks.append(asyncio.create_task(self._push_when_done(upstream_id)))

    async def _push_when_done(self, upstream_id: str) -> None:
        if not self.early:
            ready_at = self.stack.emulator.futures[upstream_id].ready_at
            await asyncio.sleep(max(0.0, ready_at - time.time()))
        if upstream_id not in self.drop and "*" not in self.drop:
            await self.push(upstream_id)

    def url(self, upstream_id: str) -> str:
        url = self.urls[upstream_id]
        if self.base_url is None:
            return url
        return self.base_url + urlsplit(url).path

    async def push(self, upstream_id: str, url: str | None = None) -> httpx.Response:
        body = httpx.Request("POST", "http://x", json=self.body).content
        headers = {"Content-Type": "application/json"}
        if self.secret:
            msg_id, now = f"msg_{upstream_id}", datetime.now(tz=UTC)
            headers |= {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(self.secret).sign(msg_id, now, body.decode()),
            }
        async with httpx.AsyncClient() as c:
            r = await c.post(url or self.url(upstream_id), content=body, headers=headers)
        self.answers.append(r.status_code)
        return r


async def push_stack(make_stack, cls: type = PushingOctoAI, **overrides: Any) -> Stack:
    """A stack whose upstream "echo" pushes; listen.public_url is the first bridge's URL."""
    s: Stack = await make_stack(**{"listen__public_url": "http://127.0.0.1:9", **overrides})
    provider = Provider(s)
    for rt, _, _ in s.replicas:
        # the bridge's own URL as public_url (its port is known only now); the key is the
        # store's, shared by every replica
        rt.push_links = PushLinks(await rt.store.push_key(), s.bridge.url)
        old = rt.upstreams["echo"]
        config = rt.config.upstreams["echo"]
        rt.upstreams["echo"] = cls(
            "echo", config, UPSTREAM_TOKEN, old.http.client, provider=provider
        )
    s.provider = provider  # type: ignore[attr-defined]
    return s


def _future(s: Stack, job: dict) -> Any:
    return s.emulator.futures[job["upstream_id"]]


async def _first_push_seen(s: Stack, duration_s: float) -> dict:
    """A first job, delivered, and its push seen: the upstream's pushes arrive. The push
    races the poll that saw the job done (the tests poll every 0.1 s): it may come after."""
    first = (await s.submit(inputs={"_emulate": {"duration_s": duration_s}})).json()
    await _delivered(s, first["id"], 5)
    assert await until(lambda: s.rt.pushes.arriving("echo"), 5)
    return first


async def _delivered(s: Stack, job_id: str, timeout_s: float) -> dict:
    assert await s.receiver.wait_for(
        lambda: any(d.event["data"]["id"] == job_id for d in s.receiver.succeeded()), timeout_s
    ), f"{job_id} not delivered within {timeout_s} s"
    return next(d.event for d in s.receiver.succeeded() if d.event["data"]["id"] == job_id)


@pytest.mark.parametrize("roles", [["all"], ["api", "worker"]])
async def test_a_push_finishes_the_job_at_once_with_one_poll(make_stack, roles):
    s = await push_stack(make_stack, roles=roles, **SLOW)
    started = time.monotonic()
    r = await s.submit(inputs={"_emulate": {"duration_s": 0.5}})
    job = r.json()
    assert r.status_code == 202 and job["status"] == "running"
    push_url = s.provider.urls[job["upstream_id"]]
    assert push_url.startswith(f"{s.bridge.url}/v1/push/echo/{job['id']}/")
    event = await _delivered(s, job["id"], 5)
    assert time.monotonic() - started < 2.5  # not the 20 s poll
    assert event["type"] == "job.completed"
    assert event["data"]["result"]["echo"] == {"_emulate": {"duration_s": 0.5}}
    assert _future(s, job).polls == 1
    assert s.provider.answers == [200]
    metrics = (await s.client.get("/metrics")).text
    assert 'pushbridge_pushes_received_total{upstream="echo"} 1.0' in metrics


async def test_a_forged_push_neither_finishes_early_nor_changes_the_result(make_stack):
    s = await push_stack(make_stack, **SLOW)
    s.provider.early = True  # pushes "succeeded, FORGED" as soon as the job is submitted
    job = (await s.submit(inputs={"_emulate": {"duration_s": 1.5}})).json()
    await asyncio.sleep(0.8)
    assert s.provider.answers == [200]
    now = await s.job(job["id"])
    assert now["status"] == "running" and now["result"] is None
    assert _future(s, job).polls == 1  # the push made it due: polled, still running
    # the real one, once the provider is done
    s.provider.early = False
    await asyncio.sleep(max(0.0, _future(s, job).ready_at - time.time()))
    await s.provider.push(job["upstream_id"])
    event = await _delivered(s, job["id"], 3)
    assert event["data"]["result"]["echo"] == {"_emulate": {"duration_s": 1.5}}
    assert "FORGED" not in str(event)
    assert _future(s, job).polls == 2


async def test_a_push_that_comes_while_a_poll_is_under_way(make_stack):
    # a forged early push makes the job due: its poll sees it running, but the answer
    # takes 1.5 s; meanwhile the provider finishes and pushes. That push must not be lost
    # in the 20 s until the next poll: the poll's step ends, then polls again at once.
    s = await push_stack(make_stack, cls=SlowAnsweringPushOctoAI, **SLOW)
    s.provider.early = True
    started = time.monotonic()
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.6}})).json()
    future = _future(s, job)
    await asyncio.sleep(max(0.0, future.ready_at - time.time()) + 0.1)
    assert future.polls == 1  # the first poll's answer is still on its way
    assert (await s.provider.push(job["upstream_id"])).status_code == 200
    await _delivered(s, job["id"], 5)
    assert time.monotonic() - started < 5
    assert future.polls == 2


@pytest.mark.parametrize("roles", [["all"], ["api", "worker"]])
async def test_a_push_that_comes_before_the_submit_is_committed(make_stack, roles):
    # the provider pushes while pushbridge still waits for its submit answer: the job is
    # still queued in the store then; it must not be submitted twice, nor wait 20 s
    s = await push_stack(make_stack, roles=roles, **SLOW)
    s.provider.before_answer = True
    started = time.monotonic()
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0}})).json()
    assert s.provider.answers == [200]
    await _delivered(s, job["id"], 5)
    assert time.monotonic() - started < 2.5
    assert s.emulator.requests["submit"] == 1 and _future(s, job).polls == 1


async def test_a_push_reaches_the_replica_that_holds_the_job(make_stack):
    # replica 0 submitted the job and holds its lease between polls (a local timer, next
    # poll in 20 s); the push arrives at replica 1, which must not poll it itself
    s = await push_stack(make_stack, replicas_n=2, **SLOW)
    s.provider.base_url = s.replicas[1][1].url
    started = time.monotonic()
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.5}})).json()
    assert s.replicas[0][0].workers.held_jobs()[0].id == job["id"]
    await _delivered(s, job["id"], 5)
    assert time.monotonic() - started < 2.5
    assert _future(s, job).polls == 1
    assert s.replicas[0][0].workers.held_jobs() == []  # the holder polled it, not replica 1
    assert s.replicas[1][0].metrics.pushes_received.labels("echo")._value.get() == 1


async def test_a_push_for_a_job_no_one_holds_makes_it_due_now(make_stack):
    # the next poll is beyond the sticky horizon: the store schedules it, the push
    # re-scores it and wakes the claim loops
    s = await push_stack(make_stack, worker__sticky_horizon_s=1, **SLOW)
    started = time.monotonic()
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.5}})).json()
    assert s.rt.workers.held_jobs() == []
    await _delivered(s, job["id"], 5)
    assert time.monotonic() - started < 2.5
    assert _future(s, job).polls == 1


async def test_an_altered_push_url_is_refused_without_touching_the_store(make_stack, redis):
    s = await push_stack(make_stack, **SLOW)
    s.provider.drop.add("*")
    job = (await s.submit(inputs={"_emulate": {"duration_s": 30}})).json()
    good = urlsplit(s.provider.urls[job["upstream_id"]]).path
    prefix, mac = good.rsplit("/", 1)
    other_job = "job_000" + "0" * 24
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    altered = [
        f"{prefix}/{flipped}",  # the mac
        f"{prefix}/{mac[:-1]}",  # a shorter mac
        f"/v1/push/echo/{other_job}/{mac}",  # another job
        f"/v1/push/nope/{job['id']}/{mac}",  # an unknown upstream
        f"/v1/push/echo/job_bad/{mac}",  # not a job id
    ]
    pokes = s.rt.store.round_trips["poke"]
    for path in altered:
        r = await s.provider.push(job["upstream_id"], s.bridge.url + path)
        assert r.status_code == 404 and r.json()["code"] == "not-found", path
    assert (await s.client.get(good)).status_code == 405
    assert s.rt.store.round_trips["poke"] == pokes
    assert await redis.hget(s.rt.store.keys.job(job["id"]), "pushed_at") is None
    assert _future(s, job).polls == 0
    metrics = (await s.client.get("/metrics")).text
    assert 'pushbridge_pushes_refused_total{reason="url",upstream="echo"} 4.0' in metrics
    assert 'pushbridge_pushes_refused_total{reason="url",upstream="-"} 1.0' in metrics
    # the real URL works
    assert (await s.provider.push(job["upstream_id"])).status_code == 200
    assert await redis.hget(s.rt.store.keys.job(job["id"]), "pushed_at") is not None


async def test_no_push_url_without_public_url_or_with_push_off(make_stack):
    s = await push_stack(make_stack, upstreams__echo__push=False, **SLOW)
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.2}})).json()
    assert s.provider.urls == {} and job["status"] == "running"
    s = await push_stack(make_stack, **SLOW)
    for rt, _, _ in s.replicas:
        rt.push_links = None  # as without listen.public_url
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.2}})).json()
    assert s.provider.urls == {} and job["status"] == "running"


async def test_a_push_for_a_cancelled_job_changes_nothing(make_stack):
    s = await push_stack(make_stack, **SLOW)
    s.provider.drop.add("*")
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.3}})).json()
    assert (await s.client.delete(f"/v1/jobs/{job['id']}")).status_code == 200
    await asyncio.sleep(0.4)
    assert (await s.provider.push(job["upstream_id"])).status_code == 200
    await asyncio.sleep(0.5)
    after = await s.job(job["id"])
    assert after["status"] == "cancelled" and after["result"] is None
    assert _future(s, job).polls == 0 and s.receiver.deliveries == []


async def test_signed_pushes_only_when_a_push_secret_is_set(make_stack):
    s = await push_stack(make_stack, cls=SigningPushOctoAI, **SLOW)
    s.rt.secrets.push_secrets["echo"] = PUSH_SECRET  # as upstreams.echo.push_secret_env does
    s.provider.drop.add("*")
    job = (await s.submit(inputs={"_emulate": {"duration_s": 0.2}})).json()
    await asyncio.sleep(0.3)
    unsigned = await s.provider.push(job["upstream_id"])
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "push-unverified"
    s.provider.secret = "whsec_" + base64.b64encode(b"another-secret-0123456789abcdef").decode()
    assert (await s.provider.push(job["upstream_id"])).status_code == 401
    assert (await s.job(job["id"]))["status"] == "running"
    s.provider.secret = PUSH_SECRET
    assert (await s.provider.push(job["upstream_id"])).status_code == 200
    await _delivered(s, job["id"], 3)
    metrics = (await s.client.get("/metrics")).text
    assert 'pushbridge_pushes_refused_total{reason="signature",upstream="echo"} 2.0' in metrics


def test_standard_webhook_signatures():
    body = b'{"id": "p1", "status": "succeeded"}'
    now = datetime.now(tz=UTC)
    sign = Webhook(PUSH_SECRET).sign
    headers = {"Webhook-Id": "m1", "Webhook-Timestamp": str(int(now.timestamp()))}
    assert verify_standard_webhook(
        PUSH_SECRET, {**headers, "Webhook-Signature": sign("m1", now, body.decode())}, body
    )
    old = now - timedelta(minutes=10)
    stale = {"webhook-id": "m1", "webhook-timestamp": str(int(old.timestamp()))}
    assert not verify_standard_webhook(
        PUSH_SECRET, {**stale, "webhook-signature": sign("m1", old, body.decode())}, body
    )
    good = {**headers, "webhook-signature": sign("m1", now, body.decode())}
    assert not verify_standard_webhook(PUSH_SECRET, good, body + b" ")
    assert not verify_standard_webhook("whsec_!!!", good, body)
    assert not verify_standard_webhook(PUSH_SECRET, {}, body)


async def test_a_push_secret_for_a_protocol_that_cannot_check_it_is_refused(
    valkey, redis, store: Store
):
    raw = base_config("http://127.0.0.1:9", upstreams__echo__push_secret_env="PUSH_SECRET")
    env = {**ENV, "PUSH_SECRET": PUSH_SECRET}
    config = parse_config(raw, env)
    secrets = resolve_secrets(config, env)
    assert secrets.push_secrets == {"echo": PUSH_SECRET}
    async with upstream_client() as up, callback_client() as cb:
        with pytest.raises(ConfigError, match=r"upstreams\.echo\.push_secret_env"):
            await build_runtime(config, secrets, store, up, cb)
    with pytest.raises(ConfigError, match="PUSH_SECRET is not set"):
        resolve_secrets(config, ENV)


async def test_polls_slow_down_while_pushes_arrive_and_a_lost_push_costs_only_lag(make_stack):
    # the usual schedule: target-lag polling, for a lag of 0.05 s a poll every 0.1 s until
    # durations are learned; 20 times slower once pushes are seen
    s = await push_stack(
        make_stack,
        upstreams__echo__poll__target_lag_s=0.05,
        upstreams__echo__poll__push_slowdown=20,
    )
    rt: Runtime = s.rt
    first = await _first_push_seen(s, duration_s=0.6)
    assert _future(s, first).polls > 2  # no push seen yet: the usual polls
    pushed = [(await s.submit(inputs={"_emulate": {"duration_s": 1.0}})).json() for _ in range(5)]
    lost = (await s.submit(inputs={"_emulate": {"duration_s": 0.5}})).json()
    s.provider.drop.add(lost["upstream_id"])
    for job in pushed:
        await _delivered(s, job["id"], 5)
    assert sum(_future(s, job).polls for job in pushed) <= 2 * len(pushed)
    await _delivered(s, lost["id"], 15)  # by a safety poll
    assert rt.metrics.pushes_received.labels("echo")._value.get() == 6


async def test_every_target_lag_poll_slows_down_while_pushes_arrive_not_only_the_first(
    make_stack,
):
    # target-lag polls every 0.1 s; 10 times slower (every 1 s) while pushes arrive: a job
    # of 1.5 s is polled at 1 s, then pushed (and polled once more, to read its outcome)
    s = await push_stack(
        make_stack,
        upstreams__echo__poll__target_lag_s=0.05,
        upstreams__echo__poll__push_slowdown=10,
    )
    await _first_push_seen(s, duration_s=0.2)
    jobs = [(await s.submit(inputs={"_emulate": {"duration_s": 1.5}})).json() for _ in range(3)]
    for job in jobs:
        await _delivered(s, job["id"], 10)
    assert sum(_future(s, job).polls for job in jobs) <= 2 * len(jobs)
