"""The tenants' job lists (bridge/store/lists.py) against a real Valkey: order, pages that
never repeat or skip a job under concurrent writes, filters, expiry, in-flight counts."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from bridge.model import DeliveryState, JobStatus, new_job
from bridge.store import Commit, InFlightLimit, ListQuery, Store
from bridge.store.lists import MAX_EXAMINED, decode_cursor, encode_cursor

S, D = JobStatus, DeliveryState


async def _create(store: Store, tenant: str = "t1", upstream: str = "u", **kw) -> tuple[str, str]:
    # what the API stores (a field at its default, such as delivery_state none, is left out)
    fields = new_job(tenant, upstream, "{}", "https://example.com/h", "null", 60).creation_fields()
    created = await store.create_job(tenant, fields, 60_000, "sha", **kw)
    return created.job_id, created.token


async def _many(store: Store, n: int, **kw) -> list[tuple[str, str]]:
    return list(await asyncio.gather(*(_create(store, **kw) for _ in range(n))))


async def _set(store: Store, job_id: str, token: str, **fields) -> None:
    assert await store.commit("due", job_id, token, Commit(fields=fields))


async def _all(store: Store, tenant: str = "t1", **q) -> list[str]:
    """Every page, in order; asserts that each page but the last has a cursor."""
    ids: list[str] = []
    below = None
    while True:
        page = await store.list_jobs(tenant, ListQuery(below=below, **q))
        ids += [j.id for j in page.jobs]
        if page.next_member is None:
            return ids
        below = page.next_member


async def _newest_first(store: Store, ids: list[str]) -> list[str]:
    """The ids as the list should order them: created_at, then id, descending."""
    created = {i: (await store.get_job(i)).created_at for i in ids}  # type: ignore[union-attr]
    return sorted(ids, key=lambda i: (created[i], i), reverse=True)


async def test_newest_first_over_all_partitions_in_pages(store: Store):
    made = []
    for _ in range(5):  # several store milliseconds, several jobs in each
        made += [i for i, _ in await _many(store, 9)]
        await asyncio.sleep(0.003)
    await _many(store, 3, tenant="t2")  # another tenant's jobs are not listed
    expected = await _newest_first(store, made)
    assert len({store.keys.partition_of(i) for i in made}) == store.partitions
    for limit in (1, 7, 45, 50, 200):
        assert await _all(store, limit=limit) == expected, limit
    page = await store.list_jobs("t1", ListQuery(limit=45))
    assert page.rounds == 1 and page.next_member is None  # exactly all: no empty last page
    assert [j.tenant for j in page.jobs] == ["t1"] * 45
    assert await _all(store, tenant="t3") == []


async def test_pages_neither_repeat_nor_skip_under_concurrent_writes(store: Store):
    rng = random.Random(7)
    jobs = dict(await _many(store, 120))
    before = set(jobs)
    gone: set[str] = set()
    seen: list[str] = []
    below = None
    while True:
        page = await store.list_jobs("t1", ListQuery(limit=9, below=below))
        seen += [j.id for j in page.jobs]
        # meanwhile: new jobs, state changes, and jobs that disappear
        jobs.update(await _many(store, 4))
        for job_id in rng.sample(sorted(before - gone), 6):
            await _set(store, job_id, jobs[job_id], status=S.COMPLETED, delivery_state=D.FAILED)
        unseen = sorted(before - gone - set(seen))
        if unseen:
            victim = rng.choice(unseen)
            await store.redis.delete(store.keys.job(victim))
            gone.add(victim)
        if page.next_member is None:
            break
        below = page.next_member
    assert len(seen) == len(set(seen))  # no repeats
    assert set(seen) >= before - gone  # every job there all along was listed
    assert not set(seen) & gone  # deleted before their page: not listed
    assert seen == sorted(seen, key=seen.index)  # and in order:
    assert seen == [i for i in await _newest_first(store, seen)]


async def test_filters_read_their_own_sets(store: Store):
    jobs = dict(await _many(store, 30))
    ids = list(jobs)
    for i in ids[:5]:
        await _set(store, i, jobs[i], status=S.RUNNING)
    for i in ids[5:12]:
        await _set(store, i, jobs[i], status=S.COMPLETED, delivery_state=D.DELIVERED)
    for i in ids[12:15]:
        await _set(store, i, jobs[i], status=S.COMPLETED, delivery_state=D.FAILED)
    for i in ids[15:17]:
        await _set(store, i, jobs[i], status=S.FAILED, delivery_state=D.FAILED)
    other = dict(await _many(store, 4, upstream="v"))
    for i in list(other)[:2]:
        await _set(store, i, other[i], status=S.COMPLETED, delivery_state=D.FAILED)

    async def listed(**q) -> set[str]:
        result = await _all(store, **q)
        assert len(result) == len(set(result))
        return set(result)

    assert await listed(states=(D.FAILED,)) == set(ids[12:17]) | set(list(other)[:2])
    assert await listed(states=(D.FAILED,), upstream="u") == set(ids[12:17])
    assert await listed(statuses=(S.QUEUED, S.RUNNING)) == set(ids[:5] + ids[17:]) | set(
        list(other)[2:]
    )
    assert await listed(statuses=(S.COMPLETED,), states=(D.FAILED,)) == set(ids[12:15]) | set(
        list(other)[:2]
    )
    assert await listed(statuses=(S.FAILED,), states=(D.DELIVERED,)) == set()
    assert await listed(upstream="v") == set(other)
    no_delivery = set(ids[:5] + ids[17:]) | set(list(other)[2:])
    assert await listed(states=(D.NONE,)) == no_delivery  # read from the status sets
    assert await listed(states=(D.NONE, D.FAILED), statuses=(S.RUNNING, S.FAILED)) == set(
        ids[:5] + ids[15:17]
    )
    assert await listed(upstream="nope") == set()
    page = await store.list_jobs("t1", ListQuery(states=(D.FAILED,)))
    assert page.examined == 7  # the failed deliveries only, not the 34 jobs


async def test_cancel_and_redeliver_move_jobs_between_sets(store: Store):
    (a, _), (b, tb) = await _many(store, 2)
    assert await store.cancel(a, "t1", 60_000) == "ok"
    await _set(store, b, tb, status=S.COMPLETED, delivery_state=D.FAILED)
    assert await store.redeliver(b, "t1") == "ok"
    assert await _all(store, statuses=(S.CANCELLED,)) == [a]
    assert await _all(store, states=(D.PENDING,)) == [b]
    assert await _all(store, states=(D.FAILED,)) == []
    # one status set per job, one delivery set unless it has none; all in the job's slot
    lists = [k async for k in store.redis.scan_iter(match="pbtest:*:list:*")]
    members = [m for k in lists for m in await store.redis.zrange(k, 0, -1)]
    assert sorted(m.split(":")[1] for m in members) == sorted([a, b, b])
    assert await _all(store, states=(D.NONE,)) == [a]
    for key in lists:
        assert key_slot(key.encode()) in {
            key_slot(store.keys.fence(store.keys.partition_of(j)).encode()) for j in (a, b)
        }


async def test_a_retried_create_or_commit_lists_once(store: Store):
    job_id, token = await _create(store)
    keys = [store.keys.job(job_id), "x", store.keys.fence(store.keys.partition_of(job_id)), "y"]
    # the create script run again for the same id (its reply was lost) changes nothing
    again = await store.scripts.call(
        store._create, keys, [job_id, 0, "", 0, "t1", "", "status", "queued"]
    )
    assert again[0] == 1
    assert sum(await store.lists.in_flight("t1")) == 1
    c = Commit(fields={"status": S.COMPLETED})
    opts = c.options(job_id, token, "commit-1")
    await store.scripts.call(
        store._commit, _commit_keys(store, job_id), [opts, "status", "completed"]
    )
    await store.scripts.call(
        store._commit, _commit_keys(store, job_id), [opts, "status", "completed"]
    )
    assert sum(await store.lists.in_flight("t1")) == 0
    assert await _all(store, statuses=(S.COMPLETED,)) == [job_id]


def _commit_keys(store: Store, job_id: str) -> list[str]:
    p = store.keys.partition_of(job_id)
    return [
        store.keys.job(job_id),
        store.keys.fence(p),
        store.keys.schedule("due", p),
        store.keys.schedule("deliver", p),
        store.keys.result(job_id),
        store.keys.attempts(job_id),
        store.keys.schedule("failed", p),
        store.keys.counters(p),
    ]


async def test_gone_jobs_leave_the_lists_when_read_or_swept(store: Store, redis: Redis):
    jobs = dict(await _many(store, 12))
    ids = list(jobs)
    for i in ids:
        await _set(store, i, jobs[i], status=S.COMPLETED, delivery_state=D.DELIVERED)
    await redis.delete(store.keys.job(ids[0]))
    assert ids[0] not in await _all(store)  # removed as the page met it
    assert await _members(store) == 2 * 11
    # the sweep looks only at jobs created more than retention ago
    assert await store.lists.sweep(retention_ms=60_000) == (0, 0)
    await redis.delete(*[store.keys.job(i) for i in ids[1:5]])
    examined, removed = await store.lists.sweep(retention_ms=0)
    assert (examined, removed) == (11, 4)
    assert await _members(store) == 2 * 7
    assert sorted(await _all(store)) == sorted(ids[5:])


async def test_the_sweep_steps_over_old_jobs_still_kept(store: Store, redis: Redis):
    """A small budget: kept jobs at the old end do not stop the sweep from reaching the
    expired ones behind them."""
    jobs = dict(await _many(store, 40))
    ordered = list(reversed(await _newest_first(store, list(jobs))))  # oldest first
    for i in ordered:
        await _set(store, i, jobs[i], status=S.COMPLETED)
    await redis.delete(*[store.keys.job(i) for i in ordered[20:]])
    removed = 0
    for _ in range(12):
        removed += (await store.lists.sweep(retention_ms=0, budget=3))[1]
    assert removed == 20
    assert sorted(await _all(store)) == sorted(ordered[:20])


async def _members(store: Store) -> int:
    return sum(
        [await store.redis.zcard(k) async for k in store.redis.scan_iter(match="pbtest:*:list:*")]
    )


async def test_work_per_request_is_bounded(store: Store):
    """Two filters where no job matches both: each page examines a bounded number of jobs
    and hands out a cursor; following them ends, having examined each job about once (a
    page goes on below the highest point where a partition stopped)."""
    jobs = dict(await _many(store, MAX_EXAMINED + 600))
    pages = examined = 0
    below = None
    q = {"statuses": (S.QUEUED,), "states": (D.NONE,), "upstream": "other"}
    while True:
        page = await store.list_jobs("t1", ListQuery(below=below, **q))
        assert page.jobs == [] and page.examined <= MAX_EXAMINED + store.partitions * 16
        pages, examined = pages + 1, examined + page.examined
        if page.next_member is None:
            break
        below = page.next_member
    assert pages >= 2
    assert len(jobs) <= examined < len(jobs) + pages * MAX_EXAMINED // 4


async def test_in_flight_counts_and_cap(store: Store):
    jobs = dict(await _many(store, 5))
    assert sum(await store.lists.in_flight("t1")) == 5
    a, b, c = list(jobs)[:3]
    await _set(store, a, jobs[a], status=S.RUNNING)  # still in flight
    await _set(store, b, jobs[b], status=S.FAILED)
    assert await store.cancel(c, "t1", 1000) == "ok"
    assert await store.lists.in_flight_by_tenant() == {"t1": 3}
    await _create(store, max_in_flight=4)
    with pytest.raises(InFlightLimit) as e:
        await _create(store, max_in_flight=4)
    assert e.value.in_flight == 4
    # an idempotent replay is answered even at the cap
    created = await store.create_job("t2", {"status": "queued"}, 0, "s", "k", 10_000, 1)
    replay = await store.create_job("t2", {"status": "queued"}, 0, "s", "k", 10_000, 1)
    assert not replay.created and replay.job_id == created.job_id
    # a deleted active job gives its slot back when the lists meet it
    await store.redis.delete(store.keys.job(a))
    await _all(store)
    assert sum(await store.lists.in_flight("t1")) == 3


def test_cursors_are_positions_and_checked():
    member = "1700000000123:job_00a" + "0" * 24
    assert encode_cursor(member) == "1700000000123" + "00a" + "0" * 24
    assert decode_cursor(encode_cursor(member)) == member
    for bad in ("", "xyz", "1:job_x", member, encode_cursor(member) + "0", "A" * 40):
        assert decode_cursor(bad) is None


async def test_every_list_gets_a_share_of_the_sweep(store: Store, redis: Redis):
    """Many old jobs still kept in one list (completed ones of t1, whose deliveries are
    retried, say) do not hold up the expired ones of another list or tenant."""
    kept = dict(await _many(store, 400))
    cancelled = [i for i, _ in await _many(store, 5)]
    other = dict(await _many(store, 5, tenant="t2"))
    for jobs in (kept, other):
        for i, token in jobs.items():
            await _set(store, i, token, status=S.COMPLETED)
    for i in cancelled:
        assert await store.cancel(i, "t1", 60_000) == "ok"
    await redis.delete(*[store.keys.job(i) for i in [*cancelled, *other]])
    removed = (await store.lists.sweep(retention_ms=0, budget=6 * 8))[1]
    assert removed == 10  # in one call, with 400 kept jobs ahead in their list
    assert await _all(store, tenant="t2") == []
    assert sorted(await _all(store)) == sorted(kept)
