"""The chaos run, small: replicas kill -9'd, the store restarted, faults everywhere; no loss."""

from __future__ import annotations

import pytest

from bench.chaos import run


@pytest.mark.slow
async def test_small_chaos_run_loses_nothing():
    report = await run(jobs=150, n_replicas=2, kills=3, seed=5, rate_per_s=40, settle_s=60)
    assert report["accepted"] == 150
    assert report["lost"] == 0, report["lost ids"]
    assert report["wrong events"] == 0
    assert report["signature failures"] == 0
    assert report["replica kill -9s"] >= 3 and report["store restarts"] == 1
    assert report["replica exit codes after SIGTERM"] == [0, 0]
