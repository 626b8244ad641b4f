"""A small run of the benchmark so it cannot rot; the targets are checked by bench/, not here."""

from __future__ import annotations

import pytest

from bench.run import main_async
from bench.targets import report


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
    assert "(iii) store memory" in report(results)
