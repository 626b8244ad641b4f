"""GET /v1/jobs with 100,000 jobs in the store: latency of pages, filters and cursors.

    python -m bench.lists [--jobs 100000] [--repeat 40]

Starts an embedded Valkey (no persistence) and an api-role bridge on 127.0.0.1, stores
the jobs of one tenant through the job-creation script (in their final states, as the
scripts list them: 93 % completed and delivered, 1 % failed deliveries, 5 % running,
1 % cancelled; two upstreams, 99.9 % / 0.1 %), then times each query over HTTP (p50 and
p99 of --repeat requests) and at the store (Store.list_jobs: round trips, members
examined), and walks every page. Prints the figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from typing import Any

import httpx
from redis.asyncio import Redis

from bridge.api.serving import start_server
from bridge.config import parse_config, resolve_secrets
from bridge.delivery.signing import new_webhook_secret
from bridge.engine.runtime import build_runtime
from bridge.model import DeliveryState as D
from bridge.model import JobStatus as S
from bridge.net.client import callback_client, upstream_client
from bridge.process import bridge_app
from bridge.store import ListQuery, Store
from bridge.store.embedded import EmbeddedValkey, free_port
from bridge.store.lists import SWEEP_BUDGET, encode_cursor

KEY = "pb_bench_key"
TENANT = "acme"
STATES = [  # (share, status, delivery state)
    (0.93, "completed", "delivered"),
    (0.01, "completed", "failed"),
    (0.05, "running", "none"),
    (0.01, "cancelled", "none"),
]


def _fields(rng: random.Random, i: int) -> dict[str, Any]:
    r, acc = rng.random(), 0.0
    status, state = STATES[-1][1:]
    for share, st, ds in STATES:
        acc += share
        if r < acc:
            status, state = st, ds
            break
    return {
        "tenant": TENANT,
        "upstream": "rare" if i % 1000 == 0 else "whisper",
        "status": status,
        "delivery_state": state,
        "callback_url": "https://hooks.example.com/pushbridge/callback",
        "inputs": '{"audio_url": "https://example.com/a.wav", "language": "en"}',
        "metadata": f'{{"order": {i}, "customer": "c-1234"}}',
        "deadline_ms": 3_600_000,
        "delivery_attempts": 1 if state == "delivered" else 8 if state == "failed" else 0,
        "last_status_code": 200 if state == "delivered" else 500 if state == "failed" else "",
        "upstream_ref": f'{{"id": "f-{i}", "data": {{"poll_url": "https://x/futures/{i}"}}}}',
    }


async def fill(store: Store, n: int) -> float:
    rng = random.Random(1)
    started = time.perf_counter()
    for start in range(0, n, 2000):
        await asyncio.gather(
            *(
                store.create_job(TENANT, _fields(rng, i), 3_600_000, "sha")
                for i in range(start, min(n, start + 2000))
            )
        )
    return time.perf_counter() - started


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {statistics.median(samples) * 1000:6.2f} ms  p99 {q[98] * 1000:6.2f} ms"


async def time_http(client: httpx.AsyncClient, path: str, repeat: int) -> tuple[list[float], dict]:
    samples, body = [], {}
    for _ in range(repeat):
        t = time.perf_counter()
        r = await client.get(path)
        samples.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        body = r.json()
    return samples, body


async def walk(client: httpx.AsyncClient, query: str) -> tuple[int, int, float]:
    """Every page of a query at limit=200: (jobs, pages, seconds)."""
    jobs = pages = 0
    cursor = None
    started = time.perf_counter()
    seen: set[str] = set()
    while True:
        r = await client.get(f"/v1/jobs?limit=200{query}" + (f"&cursor={cursor}" if cursor else ""))
        body = r.json()
        pages += 1
        for job in body["data"]:
            assert job["id"] not in seen
            seen.add(job["id"])
        jobs += len(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return jobs, pages, time.perf_counter() - started


async def run(n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(tmp, appendonly=False)
        valkey.start()
        try:
            await _bench(valkey.url, n, repeat)
        finally:
            valkey.stop()


async def _bench(url: str, n: int, repeat: int) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, "pushbridge", 16)
    print(f"filling {n} jobs of one tenant over 16 partitions ...", flush=True)
    fill_s = await fill(store, n)
    print(f"  {fill_s:.1f} s ({n / fill_s:,.0f} creations/s, lists written by create.lua)")
    list_keys = [k async for k in redis.scan_iter(match="pushbridge:*:list:*", count=1000)]
    list_bytes = sum([await redis.memory_usage(k) or 0 for k in list_keys])
    print(f"  list sets: {len(list_keys)} keys, {list_bytes / n:.0f} bytes per job")
    running = [k for k in list_keys if k.endswith(":s:running")]
    running_bytes = sum([await redis.memory_usage(k) or 0 for k in running])
    running_n = sum([await redis.zcard(k) for k in running])
    print(
        f"  per job in flight (in its status set only: no delivery yet): "
        f"{running_bytes / running_n:.0f} bytes; in-flight counts: "
        f"{sum((await store.lists.in_flight_by_tenant()).values())}"
    )
    env = {"ACME_KEYS": KEY, "ACME_SECRET": new_webhook_secret()}
    port = free_port()
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "port": port},
            "store": {"url": url},
            "tenants": [
                {"name": TENANT, "api_keys_env": "ACME_KEYS", "webhook_secret_env": "ACME_SECRET"}
            ],
            "upstreams": {"whisper": {"url": "http://127.0.0.1:9/infer"}},
        },
        env,
    )
    async with upstream_client() as up, callback_client() as cb:
        rt = await build_runtime(config, resolve_secrets(config, env), store, up, cb)
        server = await start_server(bridge_app(rt, "api"), port)
        try:
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
            ) as client:
                await _queries(client, store, n, repeat)
        finally:
            await server.stop()
    await redis.aclose()


async def _queries(client: httpx.AsyncClient, store: Store, n: int, repeat: int) -> None:
    middle = (await store.list_jobs(TENANT, ListQuery(limit=200))).next_member
    for _ in range(n // 2 // 200 - 1):  # a cursor half-way down the list
        middle = (await store.list_jobs(TENANT, ListQuery(limit=200, below=middle))).next_member
    assert middle is not None
    deep = encode_cursor(middle)
    cases = [
        ("first page, limit 50", "/v1/jobs", ListQuery()),
        ("first page, limit 200", "/v1/jobs?limit=200", ListQuery(limit=200)),
        (f"page at job {n // 2:,}", f"/v1/jobs?cursor={deep}", ListQuery(below=middle)),
        ("delivery=failed (1 %)", "/v1/jobs?delivery=failed", ListQuery(states=(D.FAILED,))),
        (
            "status=queued,running (5 %)",
            "/v1/jobs?status=queued,running",
            ListQuery(statuses=(S.QUEUED, S.RUNNING)),
        ),
        (
            "status=completed&delivery=failed",
            "/v1/jobs?status=completed&delivery=failed",
            ListQuery(statuses=(S.COMPLETED,), states=(D.FAILED,)),
        ),
        ("upstream=whisper (99.9 %)", "/v1/jobs?upstream=whisper", ListQuery(upstream="whisper")),
        ("upstream=rare (0.1 %, bounded)", "/v1/jobs?upstream=rare", ListQuery(upstream="rare")),
    ]
    print(f"\nGET over HTTP (127.0.0.1), {repeat} requests each; store side: round trips, examined")
    for name, path, query in cases:
        samples, body = await time_http(client, path, repeat)
        page = await store.list_jobs(TENANT, query)
        print(
            f"  {name:34s} {_ms(samples)}  {len(body['data']):3d} jobs  "
            f"rounds {page.rounds}  examined {page.examined}"
        )
    print("\nwalking every page at limit=200")
    walks = [
        ("all jobs", ""),
        ("delivery=failed", "&delivery=failed"),
        ("upstream=rare", "&upstream=rare"),
    ]
    for name, query in walks:
        jobs, pages, seconds = await walk(client, query)
        per_page_ms = seconds / pages * 1000
        print(f"  {name:16s} {jobs:6d} jobs in {pages:4d} pages, {seconds:.2f} s", end="")
        print(f" ({per_page_ms:.1f} ms/page)")
    await sweep(store, n)


async def sweep(store: Store, n: int) -> None:
    """The sweep with a tenth of the jobs expired (their records deleted)."""
    started = time.perf_counter()
    await store.lists.sweep(86_400_000)
    print(f"\nsweep, nothing old enough to check: {(time.perf_counter() - started) * 1000:.1f} ms")
    page = await store.list_jobs(TENANT, ListQuery(limit=200))
    jobs = list(page.jobs)
    while page.next_member and len(jobs) < n // 10:
        page = await store.list_jobs(TENANT, ListQuery(limit=200, below=page.next_member))
        jobs += page.jobs
    await store.redis.delete(*[store.keys.job(j.id) for j in jobs])
    sweepable = sum(j.status in ("completed", "failed", "cancelled") for j in jobs)
    calls: list[tuple[float, int]] = []
    total = 0
    while total < sweepable and len(calls) < 1000:
        t = time.perf_counter()
        _, removed = await store.lists.sweep(0)  # every job is old enough to be checked
        calls.append((time.perf_counter() - t, removed))
        total += removed
    times = [c[0] for c in calls]
    print(
        f"sweep after {len(jobs)} records deleted: {total} of the {sweepable} finished ones "
        f"removed in {len(calls)} calls of {SWEEP_BUDGET} members per partition, one pass "
        f"over all {n} jobs (queued or running ones are removed by the pages that meet them); "
        f"per call (16 partitions) median {statistics.median(times) * 1000:.0f} ms, "
        f"slowest {max(times) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.repeat))


if __name__ == "__main__":
    main()
