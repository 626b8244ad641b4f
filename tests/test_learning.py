"""Learned polling: the schedule follows the upstream's duration distribution."""

from __future__ import annotations

import asyncio
import math
import random

from bridge.emulator import EmulatorSettings
from bridge.learning import EDGES_S, Durations, bucket_of
from tests.conftest import UPSTREAM_TOKEN


def test_buckets_are_log_spaced():
    assert bucket_of(0.01) == 0
    for d in (0.3, 1.0, 4.0, 60.0, 600.0):
        b = bucket_of(d)
        assert EDGES_S[b] <= d < EDGES_S[b + 1]


def _learned(durations_s: list[float]) -> Durations:
    d = Durations(min_samples=30)
    counts: dict[str, int] = {}
    for x in durations_s:
        key = f"m:{bucket_of(x)}"
        counts[key] = counts.get(key, 0) + 1
    d.update(counts)
    return d


def test_next_poll_lands_where_completion_is_likely():
    rng = random.Random(3)
    d = _learned([4 * math.exp(rng.gauss(0, 0.98)) for _ in range(5000)])  # median 4 s
    first = d.next_poll_s("m", 0.0, hazard=0.5)
    assert 3.2 <= first <= 5.0  # about the median
    assert d.next_poll_s("m", 0.0, hazard=0.2) < first < d.next_poll_s("m", 0.0, hazard=0.8)
    later = d.next_poll_s("m", 20.0, hazard=0.5)
    assert later > first  # a job that runs long is likely to run longer still
    assert d.next_poll_s("other", 0.0, 0.5) is None  # nothing learned yet
    assert _learned([1.0] * 10).next_poll_s("m", 0.0, 0.5) is None  # too few samples


async def test_learned_polling_uses_fewer_polls_than_backoff(make_stack):
    settings = EmulatorSettings(duration_s=1.5, token=UPSTREAM_TOKEN)
    s = await make_stack(emulator=settings, upstreams__echo__poll__max_interval_s=5)
    for _ in range(40):  # teach it: 40 jobs of 1.5 s
        await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 40, 20)
    from bridge.runtime import learn_durations

    await learn_durations(s.rt)
    first_polls = s.emulator.requests["poll"] / 40
    for _ in range(20):
        await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 60, 20)
    later_polls = (s.emulator.requests["poll"] - first_polls * 40) / 20
    # geometric backoff from 0.05 s needs ~8 polls for 1.5 s; learned (from lower-bound
    # duration samples, so the first learned poll comes slightly early) about 3-4
    assert later_polls <= first_polls * 0.65, (first_polls, later_polls)
    await asyncio.sleep(0)
