"""A small run of the benchmark so it cannot rot; the targets are checked by bench/, not here."""

from __future__ import annotations

import random

import pytest

from bench.frontier import LogNormal, evaluate, min_polls_for_lag_p50, oracle_hazard, simulate
from bench.push import Result, draw_jobs
from bench.push import run as run_push
from bench.run import main_async
from bench.targets import report
from bench.wait import Options
from bench.wait import run as run_wait


@pytest.mark.slow
async def test_benchmark_smoke_run():
    results = await main_async(
        ["burst", "scale"],
        ["a-pushbridge", "b-naive-1s", "c-pushbridge-1s"],
        scale=0.01,
        window_s=3,
    )
    flows = [r for r in results if r["workload"] == "burst"]
    assert [r["variant"] for r in flows] == ["a-pushbridge", "b-naive-1s", "c-pushbridge-1s"]
    for r in flows:
        assert r["delivered"] == r["jobs"] == 50
        assert r["polls_per_job"] >= 1 and r["lag_p50_ms"] is not None
    for r in flows[::2]:  # the pushbridge variants
        assert 0 < r["redis_round_trips_per_job"] < 20
    (scale,) = [r for r in results if r["workload"] == "scale"]
    assert scale["in_flight"] == 1000 and 0 < scale["redis_bytes_per_inflight_job"] < 10_000
    assert "store memory ≤ 1 KiB" in report(results)


@pytest.mark.slow
@pytest.mark.serial  # the max lag < 1 s
async def test_push_benchmark_smoke_run():
    result = Result("smoke", draw_jobs(20, 0.0, random.Random(1)))
    await run_push(result, rate=20, timeout_s=30, raised_limits=False)
    assert len(result.lags()) == 20 and result.polls == 20 and result.pushes_sent == 20
    assert max(result.lags()) < 1.0  # pushed: the first poll is 20 s after the submit


@pytest.mark.slow
@pytest.mark.serial  # the max lag < 1 s
async def test_wait_benchmark_smoke_run_with_push():
    """bench.wait --protocol replicate, small: every waiting request is answered with its
    finished job, each job polled once (on its push: the first poll is 20 s away)."""
    opts = Options("replicate", waiters=20, hold_s=3.0, min_s=0.5, max_s=1.0, quiet=True)
    fig = await run_wait(opts)
    assert len(fig.get_store_ms) == 20 and fig.get_reads_per_waiter == 3
    assert fig.post_answered == 20 and fig.polls == 20
    assert [len(v) for v in fig.post_path_ms.values()] == [20, 20, 20]
    assert max(fig.post_provider_ms) < 1000 and max(fig.get_provider_ms) < 1000


def test_polling_frontier_of_the_realistic_workload():
    """bench/frontier.py's exact figures: a 1 s poller, and the cheapest schedule that
    matches its lag p50, on the realistic workload's distribution."""
    dist = LogNormal(4.0, 20.0)
    naive_polls, within_half_s = evaluate([float(k) for k in range(1, 500)], dist, 0.5)
    assert 6.8 < naive_polls < 7.1 and 0.49 < within_half_s < 0.51
    cheapest, covered = min_polls_for_lag_p50(dist, 0.5)
    assert covered >= 0.5
    assert naive_polls * 0.5 < cheapest < naive_polls  # better than 1 s, not by half
    polls, lag_s = simulate(oracle_hazard(dist, 0.5), dist.sample(5000, seed=1))
    assert polls < 2.5 and lag_s > 1.5  # the bridge's policy trades lag for polls
