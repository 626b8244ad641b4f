"""Learned polling: the schedule follows the upstream's duration distribution."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter

from bridge.dev.emulators.octoai import EmulatorSettings
from bridge.engine.learning import (
    EDGES_S,
    MAX_SPANS,
    SUB,
    Durations,
    LagTarget,
    bucket_of,
    interval_field,
    running_field,
)
from tests.support.config import UPSTREAM_TOKEN


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


def _median_s(d: Durations, upstream: str = "m") -> float:
    counts = d.counts[upstream]
    half, seen = sum(counts) / 2, 0.0
    for b, n in enumerate(counts):
        seen += n
        if seen >= half:
            return math.sqrt(EDGES_S[b] * EDGES_S[b + 1])
    raise AssertionError("empty")


def test_coarse_poll_intervals_still_give_the_true_distribution():
    """Jobs polled every 3 s are known only to lie in (last running poll, completed
    poll]; the estimate from those intervals finds the median that either end misses."""
    rng = random.Random(5)
    true = [4 * math.exp(rng.gauss(0, 0.98)) for _ in range(4000)]
    offsets = [rng.uniform(0, 3) for _ in true]  # where each job's first poll falls
    fields: dict[str, int] = {}
    for t, first in zip(true, offsets, strict=True):
        low = first + 3 * max(0, math.ceil((t - first) / 3) - 1) if t > first else 0.0
        high = low + 3 if t > first else first
        key = interval_field("m", low, high)
        fields[key] = fields.get(key, 0) + 1
    d = Durations()
    d.update(fields)
    assert 3.5 <= _median_s(d) <= 4.6, _median_s(d)  # true median: 4 s
    lows: Counter[str] = Counter()
    highs: Counter[str] = Counter()
    for key, n in fields.items():
        lo, hi = key.split(":s")[1].split("-")
        lows[f"m:{int(lo) // SUB}"] += n
        highs[f"m:{int(hi) // SUB}"] += n
    lower, upper = Durations(), Durations()
    lower.update(lows)
    upper.update(highs)
    assert _median_s(lower) < 3.3 and _median_s(upper) > 5.0  # each end alone is biased


def test_bad_histogram_fields_are_ignored():
    d = Durations(min_samples=1)
    d.update({"m:s3-2": 5, "m:x": 1, "m:999": 1, "m:s-4": 2, "m:s4-": 3, "m:3-4": 1})
    assert "m" not in d.counts or sum(d.counts["m"]) == 0


async def test_learned_polling_uses_fewer_polls_than_backoff(make_stack):
    settings = EmulatorSettings(duration_s=1.5, token=UPSTREAM_TOKEN)
    s = await make_stack(
        emulator=settings,
        upstreams__echo__poll__max_interval_s=5,
        upstreams__echo__poll__adaptive_hazard=0.2,
    )
    for _ in range(40):  # teach it: 40 jobs of 1.5 s
        await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 40, 20)
    from bridge.engine.runtime import learn_durations

    await learn_durations(s.rt)
    first_polls = s.emulator.requests["poll"] / 40
    for _ in range(20):
        await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 60, 20)
    later_polls = (s.emulator.requests["poll"] - first_polls * 40) / 20
    # geometric backoff from 0.05 s needs ~8 polls for 1.5 s; learned about 2-3
    assert later_polls <= first_polls * 0.65, (first_polls, later_polls)
    await asyncio.sleep(0)


def test_many_distinct_spans_are_widened_and_still_estimate_the_distribution():
    rng = random.Random(1)
    fields: Counter[str] = Counter()
    for _ in range(20_000):
        t = 4 * math.exp(rng.gauss(0, 0.98))
        fields[interval_field("m", t * rng.uniform(0.7, 1), t * rng.uniform(1, 1.4))] += 1
    assert len(fields) > MAX_SPANS
    d = Durations()
    d.update(fields)
    assert 3.4 <= _median_s(d) <= 4.7, _median_s(d)


def test_jobs_still_running_keep_the_estimate_from_leaning_short():
    """Early in a run only the short jobs have finished; counting the running ones as
    'longer than seen so far' moves the estimate back toward the truth."""
    rng = random.Random(7)
    durations = [4 * math.exp(rng.gauss(0, 0.98)) for _ in range(3000)]
    now_s = [rng.uniform(0, 12) for _ in durations]  # how long ago each job started
    done: Counter[str] = Counter()
    running: Counter[str] = Counter()
    for t, age in zip(durations, now_s, strict=True):
        if t <= age:
            done[interval_field("m", t * 0.9, t * 1.1)] += 1
        else:
            running[running_field("m", age)] += 1
    only_done, both = Durations(), Durations()
    only_done.update(done)
    both.update(done + running)
    assert _median_s(only_done) < 3.2  # the true median is 4 s
    assert 3.4 <= _median_s(both) <= 4.8, _median_s(both)
    assert both.finished["m"] == only_done.finished["m"] == sum(done.values())


def test_a_job_running_past_every_finished_one_is_polled_in_proportion_not_hours_later():
    d = Durations()
    d.update({interval_field("m", 0.9, 1.1): 50, running_field("m", 5.0): 3})
    wait_s = d.next_poll_s("m", 5.2, hazard=0.2)
    assert wait_s is not None and 0 < wait_s <= 5.2 * 0.35, wait_s


def _schedule_on(d: Durations, target: LagTarget, durations_s: list[float]) -> tuple[float, float]:
    """(polls per job, mean lag) of the target-lag schedule, as the bridge follows it
    (engine/lifecycle.py), over the given durations."""
    polls, lags = 0, []
    for t in durations_s:
        at, first = 0.0, True
        while True:
            learned = d.next_poll_for_lag_s("m", at, first)
            at += target.clamp(target.cold_gap_s if learned is None else learned, first)
            polls, first = polls + 1, False
            if at >= t:
                lags.append(at - t)
                break
    return polls / len(durations_s), sum(lags) / len(lags)


def _histogram(durations_s: list[float]) -> dict[str, int]:
    return dict(Counter(f"m:{bucket_of(x)}" for x in durations_s))


def test_target_lag_schedule_meets_the_mean_lag_with_fewer_polls_than_a_fixed_interval():
    """On the learned distribution the schedule's mean lag is target_lag_s (±5 %), at
    fewer polls than the fixed 2 x target_lag_s interval (whose mean lag is the target
    whatever the distribution): few where no job finishes, more where many do."""
    rng = random.Random(4)
    draw = [10 * math.exp(rng.gauss(0, 0.12)) for _ in range(6000)]  # ~10 s, narrow
    learned, cold = Durations(), Durations()
    target = LagTarget(target_lag_s=0.9, initial_delay_s=0.5, min_interval_s=0.5)
    learned.update(_histogram(draw[:3000]), {"m": target})
    polls, lag = _schedule_on(learned, target, draw[3000:])
    cold_polls, cold_lag = _schedule_on(cold, target, draw[3000:])
    assert abs(lag - 0.9) <= 0.045, lag
    assert abs(cold_lag - 0.9) <= 0.1, cold_lag
    assert polls <= cold_polls * 0.6, (polls, cold_polls)
    broad = [4 * math.exp(rng.gauss(0, 0.98)) for _ in range(6000)]  # the bench's log-normal
    learned.update(_histogram(broad[:3000]), {"m": target})
    polls, lag = _schedule_on(learned, target, broad[3000:])
    assert abs(lag - 0.9) <= 0.045 and polls < _schedule_on(cold, target, broad[3000:])[0]


def test_target_lag_schedule_polls_a_fixed_duration_once():
    """A model that always takes 1.2 s: one poll, target_lag_s after it finishes."""
    d = Durations()
    target = LagTarget(target_lag_s=0.5)
    d.update({interval_field("m", 1.19, 1.21): 40}, {"m": target})
    wait_s = d.next_poll_for_lag_s("m", 0.0, first=True)
    assert wait_s is not None and 1.6 <= wait_s <= 1.8, wait_s
    assert _schedule_on(d, target, [1.2] * 10)[0] == 1.0


def test_target_lag_schedule_waits_for_enough_samples_and_outlived_jobs_poll_cold():
    d = Durations(min_samples=30)
    target = LagTarget(target_lag_s=1.0)
    d.update({interval_field("m", 0.9, 1.1): 29}, {"m": target})
    assert d.next_poll_for_lag_s("m", 0.0) is None  # too few: every 2 x target_lag_s
    d.update({interval_field("m", 0.9, 1.1): 30}, {"m": target})
    assert d.next_poll_for_lag_s("m", 0.0) is not None
    assert d.next_poll_for_lag_s("m", 5.0) is None  # past every job seen
    assert d.next_poll_for_lag_s("other", 0.0) is None


async def test_target_lag_polling_learns_where_a_1_5_s_model_finishes(make_stack):
    """The default rule end to end: cold, polls every 2 x target_lag_s (0.3 s here); once
    30 jobs are learned (each known only to lie between two polls 0.3 s apart), polls
    only around the 1.5 s the model takes."""
    settings = EmulatorSettings(duration_s=1.5, token=UPSTREAM_TOKEN)
    s = await make_stack(
        emulator=settings,
        upstreams__echo__poll__max_interval_s=5,
        upstreams__echo__poll__target_lag_s=0.15,
    )
    assert s.rt.upstreams["echo"].config.poll.target_lag
    for _ in range(40):
        await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 40, 20)
    first_polls = s.emulator.requests["poll"] / 40
    from bridge.engine.runtime import learn_durations

    await learn_durations(s.rt)
    for _ in range(20):
        await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 60, 20)
    later_polls = (s.emulator.requests["poll"] - first_polls * 40) / 20
    assert first_polls >= 4 and later_polls <= first_polls * 0.5, (first_polls, later_polls)
