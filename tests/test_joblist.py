"""GET /v1/jobs against a running pushbridge, and the per-tenant limits (429) across
replicas, with their metrics."""

from __future__ import annotations

import asyncio
import time

import jsonschema
import pytest

from bridge.dev.receiver import Reply
from tests.conftest import API_KEY
from tests.test_api import assert_problem

TENANTS = [
    {"name": "alpha", "api_keys_env": "ALPHA_KEYS", "webhook_secret_env": "ALPHA_SECRET"},
    {"name": "beta", "api_keys_env": "BETA_KEYS", "webhook_secret_env": "BETA_SECRET"},
]


def _limited(**limits) -> list[dict]:
    return [{**TENANTS[0], "limits": limits}, TENANTS[1]]


async def _pages(client, query: str = "", limit: int = 50) -> list[dict]:
    jobs, cursor = [], None
    while True:
        params = f"limit={limit}" + (f"&{query}" if query else "")
        params += f"&cursor={cursor}" if cursor else ""
        r = await client.get(f"/v1/jobs?{params}")
        assert r.status_code == 200, r.text
        body = r.json()
        jobs += body["data"]
        if body["next_cursor"] is None:
            return jobs
        cursor = body["next_cursor"]


async def test_list_newest_first_filters_and_tenants(make_stack):
    s = await make_stack()
    s.receiver.plan("/down", *[Reply(500)] * 4)
    ids = []
    for i in range(7):
        ids.append((await s.submit(metadata={"n": i})).json()["id"])
    down = (await s.submit(callback_url=s.hook("/down"))).json()["id"]
    long = (await s.submit(inputs={"_emulate": {"duration_s": 30}})).json()["id"]
    other = (await s.submit(client=s.other)).json()["id"]

    async def settled() -> bool:
        return (await s.job(down))["delivery"]["state"] == "failed"

    deadline = time.monotonic() + 15
    while not await settled():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    listed = await _pages(s.client, limit=2)
    assert [j["id"] for j in listed] == [long, down, *reversed(ids)]
    assert other not in [j["id"] for j in listed]
    assert [j["id"] for j in await _pages(s.other)] == [other]
    failed = await _pages(s.client, "delivery=failed")
    assert [j["id"] for j in failed] == [down]
    assert failed[0]["delivery"]["attempts"] == 4 and failed[0]["result"] is None
    assert [j["id"] for j in await _pages(s.client, "status=queued,running")] == [long]
    assert await _pages(s.client, "status=completed&delivery=delivered&upstream=echo", 3) != []
    assert await _pages(s.client, "upstream=nope") == []
    spec = (await s.client.get("/openapi.json")).json()
    body = (await s.client.get("/v1/jobs?limit=3")).json()
    jsonschema.validate(body, {**spec["components"]["schemas"]["JobList"], **spec})
    assert len(body["data"]) == 3 and body["next_cursor"]


@pytest.mark.parametrize(
    "query",
    [
        "status=done",
        "delivery=failed,nope",
        "status=",
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=abc",
        "stauts=failed",  # a misspelt filter must not list everything
        "upstream=a&upstream=b",
    ],
)
async def test_bad_list_queries_are_400(make_stack, query):
    s = await make_stack()
    body = assert_problem(await s.client.get(f"/v1/jobs?{query}"), 400, "invalid-request")
    assert query.split("=")[0] in body["detail"]


async def test_list_needs_a_key_and_other_methods_are_405(make_stack):
    s = await make_stack()
    r = await s.client.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert_problem(r, 401, "unauthorized")
    r = await s.client.put("/v1/jobs")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_rate_limit_per_tenant_across_replicas(make_stack):
    s = await make_stack(replicas_n=2, tenants=_limited(jobs_per_s=2, burst=2))
    clients = [c for _, _, c in s.replicas]
    answers = [await s.submit(client=clients[i % 2]) for i in range(3)]
    assert [r.status_code for r in answers[:2]] == [202, 202]
    body = assert_problem(answers[2], 429, "rate-limited")
    assert answers[2].headers["retry-after"] == "1" and "2 jobs per second" in body["detail"]
    assert (await s.submit(client=s.other)).status_code == 202  # beta has no limit
    await asyncio.sleep(0.55)  # one slot back at 2/s
    assert (await s.submit(client=clients[1])).status_code == 202
    assert (await s.submit(client=clients[0])).status_code == 429
    text = (await clients[0].get("/metrics")).text + (await clients[1].get("/metrics")).text
    refused = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('pushbridge_tenant_jobs_refused_total{limit="rate",tenant="alpha"}')
    ]
    assert sum(refused) == 2


async def test_in_flight_limit_per_tenant(make_stack):
    s = await make_stack(replicas_n=2, tenants=_limited(max_jobs_in_flight=2))
    clients = [c for _, _, c in s.replicas]
    slow = {"_emulate": {"duration_s": 30}}
    a = (await s.submit(client=clients[0], inputs=slow)).json()["id"]
    assert (await s.submit(client=clients[1], inputs=slow)).status_code == 202
    r = await s.submit(client=clients[1], inputs=slow)
    body = assert_problem(r, 429, "too-many-in-flight")
    assert r.headers["retry-after"] == "1" and body["limit"] == 2
    assert (await clients[0].delete(f"/v1/jobs/{a}")).status_code == 200  # frees a slot
    quick = await clients[0].post(
        "/v1/jobs",
        json={"upstream": "echo", "inputs": {}, "callback_url": s.hook()},
        headers={"Idempotency-Key": "k1", "Authorization": f"Bearer {API_KEY}"},
    )
    assert quick.status_code == 202
    assert (await s.submit(client=clients[0], inputs=slow)).status_code == 429
    # an idempotent replay of an accepted job is answered at the limit too
    replay = await clients[1].post(
        "/v1/jobs",
        json={"upstream": "echo", "inputs": {}, "callback_url": s.hook()},
        headers={"Idempotency-Key": "k1"},
    )
    assert replay.status_code == 200 and replay.json()["id"] == quick.json()["id"]
    # the quick job finishes and frees its slot
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1, 10)
    assert (await s.submit(client=clients[1], inputs=slow)).status_code == 202
    await asyncio.sleep(0.5)  # the gauges are read from the store every 0.2 s
    text = (await clients[0].get("/metrics")).text
    assert 'pushbridge_tenant_jobs_in_flight{tenant="alpha"} 2.0' in text
    assert 'pushbridge_tenant_jobs_in_flight{tenant="beta"} 0.0' in text
    assert 'pushbridge_tenant_jobs_created_total{tenant="alpha"}' in text
