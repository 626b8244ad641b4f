"""The contract every upstream protocol meets, run once per protocol (as saq runs one TestQueue
per backend): a protocol's test module subclasses `UpstreamContract` as `Test<Protocol>Contract`
and provides a `provider` fixture, its emulator or fake server on 127.0.0.1 behind a
`Provider` (for an emulator: an `EmulatedProvider`, run by `served`). The tests drive the
adapter only through the `Upstream` interface, with the shared upstream HTTP client, over
real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.api.serving import RunningServer, start_server
from bridge.dev.emulators.common import EmulatorSettings, EmulatorState
from bridge.net.client import LeanClient, upstream_client
from bridge.upstreams.base import (
    Cancelled,
    Done,
    Expired,
    Failed,
    Fetched,
    Healthy,
    PollOutcome,
    Rejected,
    Running,
    Submitted,
    Transient,
    Upstream,
    UpstreamRef,
)
from tests.upstreams.servers import NOT_HTTP, raw_server

TOKEN = "contract-token-s3cr3t"
JOB_S = 0.3  # how long a contract job runs at the provider


class FaultInjector:
    """ASGI middleware in front of an emulator: the next requests of a step ("submit",
    "poll", "result", "cancel", "health") get planned raw answers instead."""

    def __init__(self, app: ASGIApp, step_of: Any) -> None:
        self.app = app
        self.step_of = step_of  # (method, path) -> step or None
        self.planned: dict[str, list[tuple[int, bytes, dict[str, str]]]] = defaultdict(list)
        self.requests: list[tuple[str, dict[str, str]]] = []  # (step, headers)

    def plan(self, step: str, status: int, body: bytes, headers: dict[str, str] | None) -> None:
        self.planned[step].append((status, body, headers or {}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        step = self.step_of(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if step is not None:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.requests.append((step, headers))
            if self.planned[step]:
                status, body, extra = self.planned[step].pop(0)
                await Response(body, status, extra)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Provider(ABC):
    """A protocol's provider as the contract drives it."""

    faults: FaultInjector

    @abstractmethod
    def upstream(self, client: LeanClient, base_url: str | None = None) -> Upstream:
        """The adapter configured for this provider (or for another server at base_url),
        with TOKEN as its credential."""

    @abstractmethod
    def inputs(self, duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
        """Inputs for a job that runs duration_s and ends `completed`, `failed` or
        `expired` (forgotten by the provider once done)."""

    @abstractmethod
    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        """Whether `result` (parsed JSON) is what the provider computed from `inputs`."""

    @abstractmethod
    def set_healthy(self, healthy: bool) -> None: ...

    @abstractmethod
    def carries_token(self, headers: dict[str, str]) -> bool:
        """Whether a request's headers carry TOKEN the way this protocol sends it."""

    def inject(
        self, step: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.faults.plan(step, status, body, headers)

    def requests(self, step: str) -> list[dict[str, str]]:
        """The headers of each request of `step` the provider received."""
        return [h for s, h in self.faults.requests if s == step]


class EmulatedProvider(Provider):
    """A provider that is one of the emulators (bridge.dev.emulators), its token TOKEN and
    its jobs JOB_S long unless `settings` say otherwise; `served` runs it."""

    def __init__(
        self,
        create_app: Callable[[EmulatorSettings], Starlette],
        step_of: Callable[[str, str], str | None],
        **settings: Any,
    ) -> None:
        self.settings = EmulatorSettings(**{"duration_s": JOB_S, "token": TOKEN, "seed": 1,
                                            **settings})  # fmt: skip
        self.app = create_app(self.settings)
        self.faults = FaultInjector(self.app, step_of)
        self.server: RunningServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def state(self) -> EmulatorState:
        return self.app.state.emulator  # type: ignore[no-any-return]

    def inputs(self, duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
        return {"prompt": "hi", "_emulate": {"duration_s": duration_s, "outcome": outcome}}

    def set_healthy(self, healthy: bool) -> None:
        self.settings.healthy = healthy

    def carries_token(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {TOKEN}"


P = TypeVar("P", bound=EmulatedProvider)


@contextlib.asynccontextmanager
async def served(provider: P) -> AsyncIterator[P]:
    """The provider's emulator (behind its fault injector) served on 127.0.0.1."""
    provider.server = await start_server(provider.faults)
    try:
        yield provider
    finally:
        await provider.server.stop()


async def until_finished(up: Upstream, ref: UpstreamRef) -> PollOutcome:
    """Poll until the job is no longer running."""
    for _ in range(200):
        outcome = await up.poll(ref)
        if not isinstance(outcome, Running):
            return outcome
        await asyncio.sleep(0.05)
    raise AssertionError("still running")


class UpstreamContract:
    """The tests. Subclasses provide the `provider` fixture."""

    @pytest.fixture
    async def up(self, provider: Provider) -> AsyncIterator[Upstream]:
        async with upstream_client() as client:
            yield provider.upstream(client)

    async def _submitted(self, up: Upstream, inputs: dict[str, Any]) -> UpstreamRef:
        outcome = await up.submit(inputs)
        assert isinstance(outcome, Submitted), outcome
        return outcome.ref

    async def _result(self, up: Upstream, ref: UpstreamRef, done: Done) -> bytes:
        if done.result is not None:
            assert not up.capabilities.separate_fetch
            return done.result
        assert up.capabilities.separate_fetch
        fetched = await up.fetch_result(done.fetch_ref or ref)
        assert isinstance(fetched, Fetched), fetched
        return fetched.result

    async def test_submit_running_done_result(self, up: Upstream, provider: Provider):
        inputs = provider.inputs()
        ref = await self._submitted(up, inputs)
        assert ref.id
        assert UpstreamRef.from_json(ref.to_json()) == ref  # the job stores it as JSON
        assert isinstance(await up.poll(ref), Running)
        done = await until_finished(up, ref)
        assert isinstance(done, Done), done
        result = await self._result(up, ref, done)
        assert provider.is_result_of(orjson.loads(result), inputs)
        for step in ("submit", "poll"):
            assert all(provider.carries_token(h) for h in provider.requests(step)), step

    async def test_failed_job_carries_the_providers_message(self, up: Upstream, provider):
        ref = await self._submitted(up, provider.inputs(outcome="failed"))
        failed = await until_finished(up, ref)
        assert isinstance(failed, Failed) and failed.message, failed

    async def test_rejected_by_a_4xx(self, up: Upstream, provider: Provider):
        provider.inject("submit", 400, b'{"detail": "bad inputs"}')
        outcome = await up.submit(provider.inputs())
        assert isinstance(outcome, Rejected), outcome
        assert outcome.status_code == 400 and "bad inputs" in outcome.message

    @pytest.mark.parametrize(
        ("status", "headers", "retry_after_s"),
        [(503, {}, None), (500, {}, None), (429, {"Retry-After": "7"}, 7.0)],
    )
    async def test_transient_5xx_and_429_with_retry_after(
        self, up: Upstream, provider: Provider, status, headers, retry_after_s
    ):
        provider.inject("submit", status, b"{}", headers)
        outcome = await up.submit(provider.inputs())
        assert isinstance(outcome, Transient), outcome
        assert outcome.status_code == status and outcome.retry_after_s == retry_after_s
        ref = await self._submitted(up, provider.inputs())
        provider.inject("poll", status, b"{}", headers)
        polled = await up.poll(ref)
        assert isinstance(polled, Transient) and polled.retry_after_s == retry_after_s
        assert isinstance(await up.poll(ref), Running)  # and then it goes on

    async def test_expired_404(self, up: Upstream, provider: Provider):
        ref = await self._submitted(up, provider.inputs(duration_s=0.1, outcome="expired"))
        assert isinstance(await until_finished(up, ref), Expired)
        ref = await self._submitted(up, provider.inputs())
        provider.inject("poll", 404, b'{"detail": "not found"}')
        assert isinstance(await up.poll(ref), Expired)

    async def test_expired_result_404(self, up: Upstream, provider: Provider):
        if not up.capabilities.separate_fetch:
            pytest.skip("the result comes with the poll")
        ref = await self._submitted(up, provider.inputs(duration_s=0.1))
        done = await until_finished(up, ref)
        assert isinstance(done, Done)
        provider.inject("result", 404, b'{"detail": "gone"}')
        assert isinstance(await up.fetch_result(done.fetch_ref or ref), Expired)

    async def test_malformed_json_is_transient(self, up: Upstream, provider: Provider):
        provider.inject("submit", 200, b"{not json")
        assert isinstance(await up.submit(provider.inputs()), Transient)
        ref = await self._submitted(up, provider.inputs(duration_s=0.1))
        provider.inject("poll", 200, b"<html>")
        assert isinstance(await up.poll(ref), Transient)
        done = await until_finished(up, ref)
        assert isinstance(done, Done)
        if up.capabilities.separate_fetch:
            provider.inject("result", 200, b"not json")
            assert isinstance(await up.fetch_result(done.fetch_ref or ref), Transient)

    async def test_an_answer_that_is_not_http_is_transient(self, provider: Provider):
        async with raw_server(lambda head: NOT_HTTP) as url, upstream_client() as client:
            up = provider.upstream(client, base_url=url)
            outcome = await up.submit(provider.inputs())
            assert isinstance(outcome, Transient), outcome
            assert TOKEN not in outcome.reason

    async def test_unreachable_is_transient(self, provider: Provider):
        async with raw_server(lambda head: NOT_HTTP) as url:
            pass  # closed: nothing listens there any more
        async with upstream_client() as client:
            up = provider.upstream(client, base_url=url)
            assert isinstance(await up.submit(provider.inputs()), Transient)

    async def test_cancel_where_supported(self, up: Upstream, provider: Provider):
        ref = await self._submitted(up, provider.inputs(duration_s=30))
        outcome = await up.cancel(ref)
        if not up.capabilities.cancel:
            assert isinstance(outcome, Rejected) and provider.requests("cancel") == []
            return
        assert isinstance(outcome, Cancelled), outcome
        assert isinstance(await until_finished(up, ref), Failed | Expired)

    async def test_health(self, up: Upstream, provider: Provider):
        assert isinstance(await up.health(), Healthy)
        provider.set_healthy(False)
        assert isinstance(await up.health(), Transient)
