"""/metrics after real runs: the counters, histograms and gauges move as they should."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from bridge.dev.emulators.octoai import EmulatorSettings
from bridge.dev.receiver import Reply
from tests.support.config import UPSTREAM_TOKEN


async def scrape(s) -> dict[tuple[str, tuple], float]:
    text = (await s.client.get("/metrics")).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_a_run(make_stack):
    settings = EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN, poll_503_rate=0.3, seed=4)
    s = await make_stack(emulator=settings)
    s.receiver.path_defaults["/down"] = Reply(500)
    for _ in range(3):
        await s.submit()
    await s.submit(inputs={"_emulate": {"outcome": "failed", "duration_s": 0.1}})
    await s.submit(callback_url=s.hook("/down"))
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 4, 10)
    assert await s.receiver.wait_for(lambda: len(s.receiver.to("/down")) == 4, 10)
    await asyncio.sleep(0.6)  # the backlog gauges refresh every 0.2 s in tests
    m = await scrape(s)
    assert value(m, "pushbridge_jobs_submitted_total", upstream="echo") == 5
    assert value(m, "pushbridge_jobs_finished_total", upstream="echo", outcome="completed") == 4
    assert value(m, "pushbridge_jobs_finished_total", upstream="echo", outcome="failed") == 1
    assert value(m, "pushbridge_job_duration_seconds_count", upstream="echo") == 5
    req = "pushbridge_upstream_requests_total"
    assert value(m, req, upstream="echo", kind="submit", status="202") == 5
    assert value(m, req, upstream="echo", kind="result", status="200") == 4
    assert value(m, req, upstream="echo", kind="poll", status="200") >= 5
    assert value(m, req, upstream="echo", kind="poll", status="503") >= 1
    assert value(m, req, upstream="echo", kind="health", status="200") >= 1
    assert value(m, "pushbridge_delivery_attempts_total", outcome="delivered") == 4
    assert value(m, "pushbridge_delivery_attempts_total", outcome="retry") == 4
    assert value(m, "pushbridge_delivery_lag_seconds_count") == 4
    assert 0 < value(m, "pushbridge_delivery_lag_seconds_sum") < 4 * 2
    assert value(m, "pushbridge_failed_deliveries") == 1
    assert value(m, "pushbridge_store_up") == 1
    # redelivering the failed one takes it out of the failed gauge
    failed_id = next(d.event["data"]["id"] for d in s.receiver.to("/down"))
    s.receiver.path_defaults["/down"] = Reply(200)
    assert (await s.client.post(f"/v1/jobs/{failed_id}/redeliver")).status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 5, 5)
    await asyncio.sleep(0.5)
    assert value(await scrape(s), "pushbridge_failed_deliveries") == 0


async def test_backlog_gauge_grows_without_workers(make_stack):
    s = await make_stack(role="api")
    for _ in range(7):
        await s.submit()
    await asyncio.sleep(0.6)
    m = await scrape(s)
    assert value(m, "pushbridge_due_polls") == 7  # submitted, now due for polling
    assert value(m, "pushbridge_due_deliveries") == 0


async def test_delivery_lag_counts_only_the_first_delivery_not_manual_redeliveries(make_stack):
    """A redelivery asked for hours later would add the operator's delay to the lag."""
    s = await make_stack()
    job_id = (await s.submit()).json()["id"]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    await asyncio.sleep(0.2)
    assert value(await scrape(s), "pushbridge_delivery_lag_seconds_count") == 1
    for n in (2, 3):
        assert (await s.client.post(f"/v1/jobs/{job_id}/redeliver")).status_code == 202
        assert await s.receiver.wait_for(lambda n=n: len(s.receiver.succeeded()) == n, 10)
    await asyncio.sleep(0.2)
    m = await scrape(s)
    assert value(m, "pushbridge_delivery_attempts_total", outcome="delivered") == 3
    assert value(m, "pushbridge_delivery_lag_seconds_count") == 1
