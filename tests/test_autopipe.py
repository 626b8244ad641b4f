"""Automatic pipelining: one module with a fake sender, then the store on a real Valkey."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bridge.store import Commit, Store
from bridge.store.autopipe import AutoPipeline
from bridge.store.embedded import free_port


class Sender:
    def __init__(self, fail: Exception | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list] = []
        self.fail = fail
        self.delay_s = delay_s

    async def __call__(self, calls: list) -> list:
        self.batches.append(calls)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise self.fail
        return [ValueError(args[0]) if args[0] == "bad" else args[0] for _, _, args in calls]


async def test_calls_made_in_one_iteration_share_one_batch():
    send = Sender()
    auto = AutoPipeline(send)
    replies = await asyncio.gather(*(auto.call("s", ["k"], [i]) for i in range(50)))
    assert replies == list(range(50))
    assert len(send.batches) == 1 and len(send.batches[0]) == 50


async def test_a_call_alone_is_sent_at_once_and_batches_are_capped():
    send = Sender()
    auto = AutoPipeline(send, max_batch=8)
    assert await auto.call("s", [], ["x"]) == "x"
    await asyncio.gather(*(auto.call("s", [], [i]) for i in range(20)))
    assert [len(b) for b in send.batches] == [1, 8, 8, 4]


async def test_one_failed_call_fails_only_its_caller():
    auto = AutoPipeline(Sender())
    results = await asyncio.gather(
        auto.call("s", [], ["ok"]), auto.call("s", [], ["bad"]), return_exceptions=True
    )
    assert results[0] == "ok" and isinstance(results[1], ValueError)


async def test_a_failed_round_trip_fails_every_call_in_it():
    auto = AutoPipeline(Sender(fail=RedisConnectionError("store down")))
    results = await asyncio.gather(
        *(auto.call("s", [], [i]) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results)


async def test_a_cancelled_caller_does_not_break_the_batch():
    auto = AutoPipeline(Sender(delay_s=0.05))
    slow = asyncio.ensure_future(auto.call("s", [], ["a"]))
    other = asyncio.ensure_future(auto.call("s", [], ["b"]))
    await asyncio.sleep(0.01)
    slow.cancel()
    assert await other == "b"
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_on_a_cluster_a_failing_master_delays_only_its_own_calls():
    """Split by master (shard): the calls to a master that is failing over wait for it,
    the others are answered at once (in one batch they all waited for the slowest)."""
    released = asyncio.Event()

    async def send(calls: list) -> list:
        if any(args[0].startswith("down") for _, _, args in calls):
            await released.wait()  # a master failing over: retried until it is back
        return [args[0] for _, _, args in calls]

    auto = AutoPipeline(send, shard=lambda call: call[2][0].split("-")[0])
    calls = [
        asyncio.ensure_future(auto.call("s", [], [f"{m}-{i}"]))
        for m in ("up", "down", "ok")
        for i in range(3)
    ]
    await asyncio.sleep(0.05)
    assert [c.done() for c in calls] == [True] * 3 + [False] * 3 + [True] * 3
    released.set()
    assert await asyncio.gather(*calls[3:6]) == ["down-0", "down-1", "down-2"]


async def test_concurrent_commits_take_one_round_trip_on_a_real_store(store: Store):
    created = [
        await store.create_job("t", {"status": "queued", "upstream": "u"}, 10_000, "sha")
        for _ in range(20)
    ]
    before = sum(store.round_trips.values())
    applied = await asyncio.gather(
        *(
            store.commit("due", c.job_id, c.token, Commit(fields={"status": "running"}))
            for c in created
        )
    )
    assert all(a is not None for a in applied)
    assert sum(store.round_trips.values()) - before == 1
    stale = await store.commit("due", created[0].job_id, "stale-token", Commit({}))
    assert stale is None  # fencing still per call inside a batch


async def test_batched_commits_fail_with_the_store_down():
    # the client retries as make_redis's does (once, at once), not redis-py's default 10 times
    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 1))
    store = Store(dead, retry_s=0.3)  # retried on fresh connections, then given up
    results = await asyncio.gather(
        *(store.commit("due", "job_00a" + "0" * 24, "t", Commit({})) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await dead.aclose()


async def test_a_script_error_reaches_its_caller(store: Store):
    with pytest.raises(ResponseError):
        await store._auto.call(store._commit, [], [])  # commit.lua needs its keys
