"""What the hot path leaves out, and that nothing is lost by it: polls that find a held job
still running are not committed one by one; a quick receiver is not left idle by deferrals
booked while the bridge was overloaded."""

from __future__ import annotations

import asyncio

from bridge.dev.emulators.octoai import EmulatorSettings
from bridge.engine.loops import HeldLeases
from bridge.model import Job, new_job
from bridge.store import Store
from tests.conftest import UPSTREAM_TOKEN


async def test_polls_that_find_a_held_job_running_are_not_each_committed(make_stack):
    """A 2 s job polled every 0.1 s: about 20 polls, but only its creation, submission,
    completion and delivery are committed (the lease, 5 s here, outlasts the polls by
    half a lease); the completion writes the poll count."""
    s = await make_stack(
        emulator=EmulatorSettings(duration_s=2.0, token=UPSTREAM_TOKEN, seed=1),
        upstreams__echo__poll__max_interval_s=0.1,
    )
    before = s.rt.store.round_trips["pipelined"]
    job_id = (await s.submit()).json()["id"]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    polls = s.emulator.requests["poll"]
    trips = s.rt.store.round_trips["pipelined"] - before
    stored = await s.rt.store.get_job(job_id)
    assert polls >= 10, polls
    assert trips <= 5, (trips, polls)  # was 4 + one per poll
    assert stored is not None and stored.polls == polls


async def test_a_held_job_is_committed_again_before_its_lease_could_run_out(make_stack):
    """With a 1 s lease, polls every 0.1 s of a 2 s job are committed about every half
    lease, so the stored lease never lapses while this process holds the job."""
    s = await make_stack(
        emulator=EmulatorSettings(duration_s=2.0, token=UPSTREAM_TOKEN, seed=1),
        upstreams__echo__poll__max_interval_s=0.1,
        worker__lease_s=1,
    )
    before = s.rt.store.round_trips["pipelined"]
    await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    trips = s.rt.store.round_trips["pipelined"] - before
    lost = s.rt.metrics.lost_leases.labels("due")._value.get()
    assert 6 <= trips <= 12, trips  # renewals at least every 0.5 s, fewer than the ~20 polls
    assert lost == 0


async def test_a_quick_receiver_gets_deferred_attempts_back_within_a_second(make_stack):
    """40 jobs finish together for a receiver that takes 0.45 s per event at first, one at a
    time (per_host_concurrency 1): the attempts that find its slot taken are deferred to
    turns booked about 0.45 s apart, up to 18 s ahead. Once it answers in 5 ms, they
    come back within a second each (1.7 s for all here), not at the turns booked while
    it was slow (16.5 s before): the burst benchmark's tail, where the receiver sat idle."""
    import asyncio
    import time

    from bridge.dev.receiver import Reply

    s = await make_stack(
        emulator=EmulatorSettings(duration_s=0.3, token=UPSTREAM_TOKEN, seed=1),
        callbacks__per_host_concurrency=1,
    )
    s.receiver.default = Reply(200, delay_s=0.45)
    await asyncio.gather(*(s.submit() for _ in range(40)))
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) >= 8, 10)
    s.receiver.default = Reply(200, delay_s=0.005)
    fast_from = time.monotonic()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 40, 30)
    took_s = time.monotonic() - fast_from
    deferrals = s.rt.metrics.delivery_deferrals._value.get()
    assert deferrals >= 20, deferrals
    assert took_s <= 4.0, (took_s, deferrals)


async def test_an_older_claims_chain_neither_skips_commits_nor_keeps_polling(store: Store):
    """Two chains of one job in one process (a step overran the lease and the claim loop
    claimed the job again here, under a new token): the older token's polls are not
    taken as covered by the newer lease (they commit, and are fenced out), and holding the
    job for the newer claim cancels the older chain's timer: one chain polls it."""
    ran: list[str] = []

    async def step(job: Job, token: str) -> None:
        ran.append(token)

    held = HeldLeases(store, step, max_jobs=10, concurrency=4)
    job = new_job("t", "echo", "{}", "https://example.com/h", "null", 60)
    job.id = "job_000" + "0" * 24
    held.leased(job.id, "2", 1_000, 100_000)
    assert held.lease_holds(job.id, "2", 2_000, 50_000)
    assert not held.lease_holds(job.id, "1", 2_000, 50_000)
    assert held.hold(job, "1", 0.05) and held.hold(job, "2", 0.05)
    await asyncio.sleep(0.3)
    assert ran == ["2"]


async def test_polls_of_a_failing_upstream_back_off_on_the_target_lag_schedule(make_stack):
    """Every poll answers 503 (with Retry-After: 0): on a target-lag schedule that polls
    every 0.1 s, failed polls still back off geometrically (0.05 s x 1.5^n, up to 5 s):
    about 9 polls in 3 s, not 30."""
    s = await make_stack(
        emulator=EmulatorSettings(
            duration_s=30.0, token=UPSTREAM_TOKEN, poll_503_rate=1.0, retry_after_s=0
        ),
        upstreams__echo__poll__target_lag_s=0.05,
        upstreams__echo__poll__max_interval_s=5,
    )
    await s.submit()
    await asyncio.sleep(3.0)
    polls = s.emulator.requests["poll"]
    assert 3 <= polls <= 12, polls
