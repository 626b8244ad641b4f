"""The engine drives any Upstream through the interface: whatever a call raises is a recorded
transient failure, the token goes only to the upstream's origin, cancel reaches providers
that can cancel. Full stacks over loopback HTTP."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bridge.dev.emulators.octoai import EmulatorSettings
from bridge.model import Job
from bridge.upstreams.base import Cancelled, Capabilities, UpstreamRef
from tests.conftest import UPSTREAM_TOKEN
from tests.upstreams.servers import NOT_HTTP, Recorder, http_answer, raw_server


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (e.g. "Task exception was never
    retrieved"), collected instead of logged."""
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    loop.set_exception_handler(None)


async def _until(predicate: Callable[[], Any], timeout_s: float = 10.0) -> None:
    async def wait() -> None:
        while not await predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout_s)


async def _stored(s, job_id: str) -> Job:
    job = await s.rt.store.get_job(job_id)
    assert job is not None
    return job


class Wrapped:
    """A real upstream with other capabilities, recording cancels, raising on demand."""

    protocol = "wrapped"

    def __init__(self, inner, capabilities: Capabilities | None = None) -> None:
        self.inner, self.name, self.config = inner, inner.name, inner.config
        self.capabilities = capabilities or inner.capabilities
        self.raise_on: set[str] = set()
        self.cancelled: list[UpstreamRef] = []

    def _maybe_raise(self, step: str) -> None:
        if step in self.raise_on:
            raise RuntimeError(f"boom in {step}")

    async def submit(self, inputs, push_url=None):
        self._maybe_raise("submit")
        return await self.inner.submit(inputs, push_url)

    async def poll(self, ref):
        self._maybe_raise("poll")
        return await self.inner.poll(ref)

    async def fetch_result(self, ref):
        self._maybe_raise("result")
        return await self.inner.fetch_result(ref)

    async def cancel(self, ref):
        self.cancelled.append(ref)
        self._maybe_raise("cancel")
        return Cancelled(200)

    async def health(self):
        return await self.inner.health()


async def test_submit_to_an_upstream_answering_non_http_is_accepted_and_retried(make_stack):
    async with raw_server(lambda head: NOT_HTTP) as url:  # FINDINGS D6: was a 500
        s = await make_stack(upstreams__echo__url=f"{url}/infer/echo")
        r = await s.submit()
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        job = await _stored(s, r.json()["id"])
        assert job.submits == 1 and "RemoteProtocolError" in (job.last_error or "")
        await _until(lambda: _retried(s, job.id))  # the worker submits again, with backoff


async def _retried(s, job_id: str) -> bool:
    return (await _stored(s, job_id)).submits >= 2


async def test_polls_answered_with_non_http_are_retried_and_leak_nothing(
    make_stack, loop_errors, capfd
):
    def answer(head: bytes) -> bytes:
        if head.startswith(b"POST"):
            body = b'{"response_id": "g1", "poll_url": "/poll/g1"}'
            return http_answer(202, body, {"Content-Type": "application/json"})
        return NOT_HTTP  # FINDINGS D2: the poll's error escaped with the token in its repr

    async with raw_server(answer) as url:
        s = await make_stack(upstreams__echo__url=f"{url}/infer/echo")
        r = await s.submit()
        assert r.status_code == 202 and r.json()["status"] == "running", r.text

        async def polled_thrice() -> bool:
            return (await _stored(s, r.json()["id"])).polls >= 3

        await _until(polled_thrice)
        job = await _stored(s, r.json()["id"])
        assert job.status == "running" and "RemoteProtocolError" in (job.last_error or "")
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []
    out, err = capfd.readouterr()
    assert UPSTREAM_TOKEN not in out + err


async def test_any_exception_of_an_upstream_call_is_a_recorded_transient_failure(
    make_stack, loop_errors
):
    s = await make_stack()
    broken = Wrapped(s.rt.upstreams["echo"])
    s.rt.upstreams["echo"] = broken
    broken.raise_on = {"submit"}
    r = await s.submit()
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    job_id = r.json()["id"]
    job = await _stored(s, job_id)
    assert job.submits == 1 and job.last_error == "RuntimeError: boom in submit"
    broken.raise_on = {"poll"}

    async def failed_polls() -> bool:
        job = await _stored(s, job_id)
        return job.polls >= 2 and job.last_error == "RuntimeError: boom in poll"

    await _until(failed_polls)
    assert (await _stored(s, job_id)).status == "running"
    broken.raise_on = {"result"}
    await asyncio.sleep(0.5)  # done at the emulator; the fetch fails a few times
    assert (await _stored(s, job_id)).last_error == "RuntimeError: boom in result"
    broken.raise_on = set()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    assert s.receiver.succeeded()[0].event["type"] == "job.completed"
    gc.collect()
    await asyncio.sleep(0)
    assert loop_errors == []


async def test_the_upstream_token_goes_only_to_the_upstreams_own_origin(make_stack):
    a, b = await Recorder().start(), await Recorder().start()  # two ports: two origins
    try:
        a.answers["/infer/echo"] = (202, {"response_id": "x1", "poll_url": f"{b.url}/poll/x1"})
        presigned = f"{b.url}/result/x1?X-Amz-Signature=abc"  # FINDINGS D9
        b.answers["/poll/x1"] = (200, {"status": "completed", "response_url": presigned})
        b.answers["/result/x1"] = (200, {"ok": True})
        s = await make_stack(upstreams__echo__url=f"{a.url}/infer/echo")
        assert (await s.submit()).status_code == 202
        assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
        assert s.receiver.succeeded()[0].event["data"]["result"] == {"ok": True}
        assert [x.headers.get("authorization") for x in a.seen] == [f"Bearer {UPSTREAM_TOKEN}"]
        assert [x.path for x in b.seen] == ["/poll/x1", "/result/x1"]
        assert [x.headers.get("authorization") for x in b.seen] == [None, None]
    finally:
        await a.stop()
        await b.stop()


async def test_cancel_reaches_the_provider_when_its_protocol_can_cancel(make_stack):
    s = await make_stack(emulator=EmulatorSettings(duration_s=30, token=UPSTREAM_TOKEN))
    octoai = s.rt.upstreams["echo"]
    assert not octoai.capabilities.cancel
    up = Wrapped(octoai, Capabilities(cancel=True, separate_fetch=True))
    s.rt.upstreams["echo"] = up
    for raise_on in (set(), {"cancel"}):  # a failing provider cancel: still cancelled here
        up.raise_on = raise_on
        job = (await s.submit()).json()
        assert job["status"] == "running" and job["upstream_id"]
        d = await s.client.delete(f"/v1/jobs/{job['id']}")
        assert d.status_code == 200 and d.json()["status"] == "cancelled", d.text
        assert up.cancelled[-1].id == job["upstream_id"]
    s.rt.upstreams["echo"] = octoai  # no cancel in the octoai protocol: nothing is called
    job = (await s.submit()).json()
    assert (await s.client.delete(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
    assert len(up.cancelled) == 2
