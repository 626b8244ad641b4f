"""The store's Lua scripts against a real Valkey: claims, leases, fencing, cluster-ready keys."""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from bridge.store import Commit, Store, valid_job_id


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
        "due", job_id, batch.claims[0].token, Commit(fields={"status": "running"}, source="rm")
    )
    assert (await store.get_job(job_id)).status == "running"


async def test_claim_is_exclusive_under_concurrency(store: Store):
    for _ in range(40):
        await _create(store, lease_ms=0)
    batches = await asyncio.gather(*(store.claim("due", 5000, 8) for _ in range(10)))
    claimed = [c.job_id for b in batches for c in b.claims]
    assert len(claimed) == len(set(claimed)) == 40


async def test_claim_reports_next_due_from_redis_time(store: Store):
    job_id, _token = await _create(store, lease_ms=0)
    batch = await store.claim("due", 1000, 10)
    assert batch.next_due_ms == batch.now_ms + 1000
    await store.commit("due", job_id, batch.claims[0].token, Commit(fields={}, source="3000"))
    batch2 = await store.claim("due", 1000, 10)
    assert batch2.claims == []
    assert 2900 <= batch2.next_due_ms - batch2.now_ms <= 3000


async def test_commit_moves_between_schedules_and_expires(store: Store):
    job_id, _ = await _create(store, lease_ms=0)
    claim = (await store.claim("due", 1000, 10)).claims[0]
    ok = await store.commit(
        "due",
        job_id,
        claim.token,
        Commit(
            fields={"status": "completed"},
            source="rm",
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
            fields={"delivery_state": "delivered"}, source="rm", attempt='{"x":1}', expire_ms=5000
        ),
    )
    assert 0 < await store.redis.pttl(store.keys.job(job_id)) <= 5000
    assert 0 < await store.redis.pttl(store.keys.result(job_id)) <= 5000
    assert await store.get_attempts(job_id) == ['{"x":1}']
    assert await store.redis.hget(store.keys.fence(store.keys.partition_of(job_id)), job_id) is None


async def test_release_makes_work_due_now_and_fences_the_releaser(store: Store):
    job_id, token = await _create(store, lease_ms=60000)
    assert await store.release(job_id, token)
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
