"""The store's Lua scripts against a real Valkey: claims, leases, fencing, cluster-ready keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

import bridge.store
from bridge.store import After, Commit, Remove, Store, StoreLayoutError, valid_job_id
from bridge.store.connection import make_redis
from bridge.store.embedded import free_port
from bridge.store.ratelimit import RateLimiter
from tests.support.config import ENV, base_config


@pytest.fixture
def store(any_store: Store) -> Store:
    """The tests of this file that take `store` run on a single node and on a cluster."""
    return any_store


async def _create(store: Store, lease_ms: int = 50, **kw) -> tuple[str, str]:
    created = await store.create_job(
        "t1", {"status": "queued", "upstream": "u", "tenant": "t1"}, lease_ms, "sha", **kw
    )
    return created.job_id, created.token


async def test_job_ids_embed_partition_and_keys_share_one_slot(store: Store):
    job_id, _ = await _create(store)
    assert valid_job_id(job_id)
    p = store.keys.partition_of(job_id)
    keys = [
        store.keys.job(job_id),
        store.keys.result(job_id),
        store.keys.attempts(job_id),
        store.keys.schedule("due", p),
        store.keys.schedule("deliver", p),
        store.keys.fence(p),
        store.keys.idem(p, "abc"),
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    slots = {key_slot(store.keys.fence(q).encode()) for q in range(store.partitions)}
    assert len(slots) == store.partitions  # partitions spread over slots


async def test_creator_holds_the_lease_until_it_expires(store: Store):
    job_id, token = await _create(store, lease_ms=200)
    assert (await store.claim("due", 1000, 10)).claims == []
    await asyncio.sleep(0.25)
    batch = await store.claim("due", 1000, 10)
    assert [c.job_id for c in batch.claims] == [job_id]
    assert int(batch.claims[0].token) == int(token) + 1
    # the creator's lease is gone: its commit is refused (fencing)
    assert not await store.commit("due", job_id, token, Commit(fields={"status": "running"}))
    assert (await store.get_job(job_id)).status == "queued"
    assert await store.commit(
        "due", job_id, batch.claims[0].token, Commit(fields={"status": "running"}, source=Remove())
    )
    assert (await store.get_job(job_id)).status == "running"


async def test_claim_is_exclusive_under_concurrency(store: Store):
    for _ in range(40):
        await _create(store, lease_ms=0)
    # room for all 40 in any spread over the partitions (jobs land in random partitions;
    # with a limit of 8, i.e. 1 per partition per claim, 10 claims took at most 10 of one)
    batches = await asyncio.gather(*(store.claim("due", 5000, 40) for _ in range(10)))
    claimed = [c.job_id for b in batches for c in b.claims]
    assert len(claimed) == len(set(claimed)) == 40


async def _redis_ms(redis: Redis) -> int:
    """A server's TIME in ms (the single Valkey's: the cluster's nodes run on the same
    machine, so on the same clock)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_claim_reports_next_due_from_redis_time(store: Store, redis: Redis):
    job_id, _token = await _create(store, lease_ms=0)
    before_ms = await _redis_ms(redis)
    batch = await store.claim("due", 1000, 10)
    # the lease runs from the claimed partition's clock, read between before_ms and now_ms
    # (now_ms is the latest of the partitions' clocks, read one after another, or on
    # several masters at once): no local clock, and no guess at how long the claim took
    assert before_ms + 1000 <= batch.next_due_ms <= batch.now_ms + 1000
    before_ms = await _redis_ms(redis)
    await store.commit("due", job_id, batch.claims[0].token, Commit(fields={}, source=After(3000)))
    batch2 = await store.claim("due", 1000, 10)
    assert batch2.claims == []
    assert before_ms + 3000 <= batch2.next_due_ms <= batch2.now_ms + 3000


async def test_commit_moves_between_schedules_and_expires(store: Store):
    job_id, _ = await _create(store, lease_ms=0)
    claim = (await store.claim("due", 1000, 10)).claims[0]
    ok = await store.commit(
        "due",
        job_id,
        claim.token,
        Commit(
            fields={"status": "completed"},
            source=Remove(),
            target_delay_ms=0,
            result='{"a":1}',
            due_field="next_attempt_at",
        ),
    )
    assert ok
    job = await store.get_job(job_id)
    assert job.next_attempt_at
    assert await store.get_result(job_id) == '{"a":1}'
    d = (await store.claim("deliver", 1000, 10)).claims[0]
    assert d.job_id == job_id
    await store.commit(
        "deliver",
        job_id,
        d.token,
        Commit(
            fields={"delivery_state": "delivered"},
            source=Remove(),
            attempt='{"x":1}',
            expire_ms=5000,
        ),
    )
    assert 0 < await store.redis.pttl(store.keys.job(job_id)) <= 5000
    assert 0 < await store.redis.pttl(store.keys.result(job_id)) <= 5000
    assert await store.get_attempts(job_id) == ['{"x":1}']
    assert await store.redis.hget(store.keys.fence(store.keys.partition_of(job_id)), job_id) is None


async def test_release_makes_work_due_now_and_fences_the_releaser(store: Store):
    job_id, token = await _create(store, lease_ms=60000)
    assert await store.release_many([(job_id, token)]) == 1
    assert not await store.commit("due", job_id, token, Commit(fields={}))
    assert [c.job_id for c in (await store.claim("due", 1000, 5)).claims] == [job_id]


async def test_cancel_and_redeliver_scripts(store: Store):
    job_id, token = await _create(store)
    assert await store.cancel(job_id, "other-tenant", 1000) == "missing"
    assert await store.redeliver(job_id, "t1") == "queued"
    assert await store.cancel(job_id, "t1", 1000) == "ok"
    assert not await store.commit("due", job_id, token, Commit(fields={"status": "running"}))
    assert await store.cancel(job_id, "t1", 1000) == "cancelled"
    await asyncio.sleep(0.06)
    assert (await store.claim("due", 1000, 10)).claims == []  # no longer scheduled


async def test_idempotency_in_the_create_script(store: Store):
    a = await store.create_job("t1", {"status": "queued"}, 0, "sha-a", "key", 10000)
    b = await store.create_job("t1", {"status": "queued"}, 0, "sha-b", "key", 10000)
    c = await store.create_job("t2", {"status": "queued"}, 0, "sha-a", "key", 10000)
    assert a.created and not b.created and c.created
    assert b.job_id == a.job_id and b.body_sha256 == "sha-a"
    assert c.job_id != a.job_id


async def test_missing_job_is_dropped_from_schedule(store: Store):
    job_id, _ = await _create(store, lease_ms=0)
    await store.redis.delete(store.keys.job(job_id))
    claim = (await store.claim("due", 1000, 10)).claims[0]
    assert not await store.commit("due", job_id, claim.token, Commit(fields={"x": 1}))
    p = store.keys.partition_of(job_id)
    assert await store.redis.zcard(store.keys.schedule("due", p)) == 0


class ReplyDropper:
    """A TCP proxy to the store that, once armed, lets the next request through, drops
    its reply and closes the client's connection: the store applied what the client
    never heard about (the store's restart can do this to a pipeline in flight)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool):
            while data := await src.read(65536):
                if replies and self.armed:
                    self.armed, self.dropped = False, self.dropped + 1
                    break
                dst.write(data)
                await dst.drain()
            writer.close()
            up_writer.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


@pytest.fixture(params=["production client", "plain client"])
async def lossy_store(request, valkey, redis) -> AsyncIterator[tuple[Store, ReplyDropper]]:
    """A store whose next reply can be lost: through the production client (its pool sends
    a command again on a new connection) or a plain one (the store's own retries)."""
    dropper = ReplyDropper(valkey.port)
    url = await dropper.start()
    if request.param == "production client":
        client = make_redis(url, cluster=False)
    else:
        client = Redis.from_url(url, decode_responses=True)
    store = Store(client, "pbtest", partitions=8)  # type: ignore[arg-type]
    await store.claim("due", 1000, 1)  # connected, scripts loaded
    yield store, dropper
    await client.aclose()
    await dropper.stop()


async def test_a_commit_whose_reply_was_lost_is_neither_refused_nor_applied_twice(lossy_store):
    store, dropper = lossy_store
    job_id, _ = await _create(store, lease_ms=0)
    claim = (await store.claim("due", 1000, 10)).claims[0]
    running = Commit(fields={"polls": 1}, source=After(60000), attempt="a1", counters={"u:s0-1": 1})
    dropper.armed = True
    applied = await store.commit("due", job_id, claim.token, running)
    assert dropper.dropped == 1 and applied is not None
    job = await store.get_job(job_id)
    assert job.updated_at == applied
    assert await store.get_attempts(job_id) == ["a1"]
    assert await store.duration_counts() == {"u:s0-1": 1}
    # a terminal commit ends the fencing: its retry must still be answered as applied
    done = Commit(fields={"status": "failed"}, source=Remove(), attempt="a2", expire_ms=60000)
    dropper.armed = True
    assert await store.commit("due", job_id, claim.token, done) is not None
    assert dropper.dropped == 2
    assert await store.get_attempts(job_id) == ["a1", "a2"]
    assert (await store.get_job(job_id)).status == "failed"


async def test_a_create_whose_reply_was_lost_creates_one_job_held_by_its_creator(lossy_store):
    store, dropper = lossy_store
    dropper.armed = True
    created = await store.create_job("t1", {"status": "queued"}, 60000, "sha", "key-1", 10000)
    assert dropper.dropped == 1
    assert created.created and created.token == "1"
    p = store.keys.partition_of(created.job_id)
    assert await store.redis.zrange(store.keys.schedule("due", p), 0, -1) == [created.job_id]
    assert await store.commit("due", created.job_id, created.token, Commit(fields={"x": 1}))
    again = await store.create_job("t1", {"status": "queued"}, 60000, "sha", "key-1", 10000)
    assert not again.created and again.job_id == created.job_id  # the key still replays


async def test_a_claim_whose_reply_was_lost_is_handed_out_by_the_next_claim(lossy_store):
    store, dropper = lossy_store
    ids = {(await _create(store, lease_ms=0))[0] for _ in range(5)}
    dropper.armed = True
    # room for all 5 in any spread over the partitions (a limit of 10 is 2 per partition:
    # 3 of the 5 in one partition left one unclaimed, ~1 run in 2)
    try:
        batch = await store.claim("due", 60000, 40)
    except RedisConnectionError:  # the plain client: the claim loop claims again
        batch = await store.claim("due", 60000, 40)
    assert dropper.dropped == 1
    assert {c.job_id for c in batch.claims} == ids
    assert all(c.job for c in batch.claims)
    for c in batch.claims:  # the tokens handed out are the current ones
        assert await store.commit("due", c.job_id, c.token, Commit(fields={}, source=Remove()))


async def test_the_layout_is_written_at_first_start_and_a_mismatch_refused(redis):
    await Store(redis, "pblayout", partitions=8).ensure_layout()
    await Store(redis, "pblayout", partitions=8).ensure_layout()  # the same: fine
    assert json.loads(await redis.get("pblayout:layout")) == {"version": 1, "partitions": 8}
    with pytest.raises(StoreLayoutError, match=r"store\.partitions: 16 configured.* 8 partitions"):
        await Store(redis, "pblayout", partitions=16).ensure_layout()
    await Store(redis, "other", partitions=16).ensure_layout()  # another prefix, another layout
    await redis.set("pblayout:layout", '{"version": 2, "partitions": 8}')
    with pytest.raises(StoreLayoutError, match="layout version 2"):
        await Store(redis, "pblayout", partitions=8).ensure_layout()


async def test_a_store_from_before_the_layout_key_is_checked_for_jobs_beyond_partitions(redis):
    old = Store(redis, "pbold", partitions=16)
    ids = [(await _create(old))[0] for _ in range(40)]
    highest = max(old.keys.partition_of(i) for i in ids)
    assert highest >= 8  # 40 jobs over 16 partitions
    with pytest.raises(StoreLayoutError, match=rf"store\.partitions: 8 .* partition {highest}"):
        await Store(redis, "pbold", partitions=8).ensure_layout()
    await Store(redis, "pbold", partitions=16).ensure_layout()
    assert json.loads(await redis.get("pbold:layout"))["partitions"] == 16


async def test_serve_refuses_a_store_laid_out_with_other_partitions(redis, valkey, tmp_path):
    await Store(redis, "pbserve", partitions=16).ensure_layout()
    raw = base_config("http://127.0.0.1:9", listen__port=free_port())
    raw["store"] = {"url": valkey.url, "key_prefix": "pbserve", "partitions": 8}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bridge", "serve", "--config", str(path)),
        env={**os.environ, **ENV},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:  # still serving: the mismatch went unnoticed
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, out.decode()[-2000:]
    assert "store.partitions: 8 configured" in out.decode()


async def test_every_script_runs_again_after_the_store_lost_its_scripts(store: Store):
    """NOSCRIPT (a restarted store, SCRIPT FLUSH) is handled in one place for every way a
    script is called: alone, in a pipeline, auto-pipelined, and by the rate limiter."""
    limiter = RateLimiter(store.redis, "pbtest")
    job_id, token = await _create(store)  # the scripts are loaded now
    calls = (
        lambda: store.cancel(job_id, "other-tenant", 1000),  # one call
        lambda: store.claim("due", 1000, 10),  # a pipeline
        lambda: store.release_many([(job_id, token)]),  # a pipeline, retried
        lambda: store.create_job("t1", {"status": "queued"}, 0, "sha"),  # auto-pipelined
        lambda: store.cancel(job_id, "t1", 1000),
        lambda: store.backlog(1000),
        lambda: limiter.acquire("u", "poll", 1000.0),
    )
    for call in calls:
        await store.redis.script_flush()
        await call()
    assert (await store.get_job(job_id)).status == "cancelled"


def test_scripts_take_the_time_from_the_prelude_only():
    lua = Path(bridge.store.__file__).parent / "lua"
    for path in lua.glob("*.lua"):
        if path.name != "_prelude.lua":
            assert "'TIME'" not in path.read_text(), path.name
    python = Path(bridge.__file__).parent.rglob("*.py")
    assert not [p.name for p in python if "register_script" in p.read_text()]  # one loader


async def test_the_embedded_store_keeps_a_job_hash_with_a_long_field_a_listpack(redis: Redis):
    # a job's upstream reference with its poll URL is ~100 bytes: over the server's
    # default hash-max-listpack-value (64), which would make the hash a hash table
    # (~850 instead of ~500 bytes per job in flight, bench/RESULTS.md)
    key = "pbtest:listpack-check"
    await redis.hset(key, mapping={"status": "running", "upstream_ref": "u" * 1000})
    try:
        assert await redis.object("encoding", key) in ("listpack", b"listpack")
    finally:
        await redis.delete(key)
