"""Waiting requests (CONTRACT §3 `Prefer: wait=N`): how soon 1,000 concurrent waiting
requests are answered once their jobs finish, and what a waiting request costs.

    python -m bench.wait --waiters 1000

Starts an embedded Valkey, the octoai emulator (in this process) and one bridge
(`pushbridge serve`, its own process, role all), all on 127.0.0.1; jobs have no
callback_url (they are only read back). Two phases:

1. GET /v1/jobs/{id}?wait=60: N requests wait on 10 jobs of `--hold-s` seconds. The
   bridge's resident memory is read (/proc/<pid>/status VmRSS) before and while all N
   wait: the difference per request is what a waiting request costs (its connection,
   request, task and waiter). Then the jobs finish and every answer's arrival is
   compared with its job's `completed_at` (the store's clock, the same machine).
2. POST /v1/jobs with `Prefer: wait=60`: N concurrent requests, jobs of 2 to 4 s.
   Each answer's arrival is compared with its job's `completed_at` (the wake-up of
   the waiting request: notice, read, answer) and with the moment the emulator
   finished it (that also counts the bridge's polling lag, as without push).

Prints the figures; the store reads the bridge made per waiting request (from its
/metrics) show that waiting does not poll the store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bridge.api.serving import start_server
from bridge.dev.emulators.octoai import EmulatorSettings, create_emulator_app
from bridge.store.embedded import EmbeddedValkey, free_port

KEY = "pb_bench_wait_key"
SECRET = "whsec_" + "YmVuY2gtd2FpdC1zZWNyZXQtMDEyMzQ1Njc4OWFi"


def bridge_config(store_url: str, port: int, emulator_url: str, max_waiters: int) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": port, "max_waiters": max_waiters},
        "store": {"url": store_url, "key_prefix": "benchwait"},
        "tenants": [{"name": "b", "api_keys_env": "BENCH_KEY", "webhook_secret_env": "BENCH_SEC"}],
        "upstreams": {"echo": {"url": f"{emulator_url}/infer/echo", "submit_timeout_s": 10}},
        "log": {"format": "json", "level": "warning"},
    }


def _ms(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def describe(label: str, values_ms: list[float]) -> str:
    v = sorted(values_ms)
    if not v:
        return f"{label}: none"
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return (
        f"{label}: p50 {p(0.5):.0f} ms, p90 {p(0.9):.0f} ms, p99 {p(0.99):.0f} ms, "
        f"max {v[-1]:.0f} ms (n={len(v)})"
    )


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            if proc.returncode is not None:
                raise SystemExit("bridge exited at start")
            try:
                async with s.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("bridge not ready")


async def phase_get(
    session: aiohttp.ClientSession, url: str, pid: int, waiters: int, hold_s: float
) -> None:
    jobs = []
    for _ in range(10):
        body = {"upstream": "echo", "inputs": {"_emulate": {"duration_s": hold_s}}}
        async with session.post(f"{url}/v1/jobs", json=body) as r:
            jobs.append((await r.json())["id"])
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    reads_before = await metric(session, url, 'pushbridge_store_round_trips_total{op="read"}')

    async def one(i: int) -> tuple[float, dict[str, Any]]:
        async with session.get(f"{url}/v1/jobs/{jobs[i % 10]}", params={"wait": "60"}) as r:
            job = await r.json()
            return time.time() * 1000, job

    tasks = [asyncio.create_task(one(i)) for i in range(waiters)]
    deadline = time.monotonic() + hold_s
    while await metric(session, url, "pushbridge_waiters ") < waiters:
        if time.monotonic() > deadline:
            raise SystemExit("the waiters did not all register before the jobs finished")
        await asyncio.sleep(0.1)
    during = rss_bytes(pid)
    answers = await asyncio.gather(*tasks)
    reads = await metric(session, url, 'pushbridge_store_round_trips_total{op="read"}')
    lags = [at - _ms(job["completed_at"]) for at, job in answers if job["status"] == "completed"]
    print(f"GET ?wait=60: {waiters} requests waiting on 10 jobs of {hold_s} s")
    print(
        f"  bridge RSS {before / 2**20:.1f} MiB before, {during / 2**20:.1f} MiB with all "
        f"waiting: {(during - before) / waiters / 1024:.1f} KiB per waiting request "
        "(connection, request, task and waiter)"
    )
    print("  " + describe("answered after the job was terminal in the store", lags))
    print(f"  store reads per waiting request: {(reads - reads_before) / waiters:.2f}")


async def phase_post(
    session: aiohttp.ClientSession, url: str, emulator: Any, waiters: int, rng: random.Random
) -> None:
    reads_before = await metric(session, url, 'pushbridge_store_round_trips_total{op="read"}')

    async def one() -> tuple[int, float, dict[str, Any]]:
        duration_s = rng.uniform(2.0, 4.0)
        body = {"upstream": "echo", "inputs": {"_emulate": {"duration_s": duration_s}}}
        async with session.post(f"{url}/v1/jobs", json=body, headers={"Prefer": "wait=60"}) as r:
            job = await r.json()
            return r.status, time.time() * 1000, job

    started = time.monotonic()
    answers = await asyncio.gather(*(one() for _ in range(waiters)))
    elapsed_s = time.monotonic() - started
    reads = await metric(session, url, 'pushbridge_store_round_trips_total{op="read"}')
    done = [(at, job) for status, at, job in answers if status == 200]
    store_lag = [at - _ms(job["completed_at"]) for at, job in done]
    provider_lag = [
        at - emulator.futures[job["upstream_id"]].ready_at * 1000
        for at, job in done
        if job.get("upstream_id") in emulator.futures
    ]
    print(f"POST Prefer: wait=60: {waiters} concurrent requests, jobs of 2-4 s ({elapsed_s:.1f} s)")
    print(f"  answered 200 (terminal): {len(done)} of {waiters}")
    print("  " + describe("answered after the job was terminal in the store", store_lag))
    print("  " + describe("answered after the emulator finished (with polling lag)", provider_lag))
    print(f"  store reads per waiting request: {(reads - reads_before) / waiters:.2f}")


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="pb-wait-"))
    valkey = EmbeddedValkey(tmp / "store", appendonly=False)
    await valkey.astart()
    emu_app = create_emulator_app(EmulatorSettings(duration_s=1.0, seed=args.seed))
    emu = await start_server(emu_app)
    port = free_port()
    config = tmp / "config.yaml"
    raw = bridge_config(valkey.url, port, emu.url, max(10_000, args.waiters))
    config.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--config",
        str(config),
        env={**os.environ, "BENCH_KEY": KEY, "BENCH_SEC": SECRET},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        await wait_ready(url, proc)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers
        ) as session:
            await phase_get(session, url, proc.pid, args.waiters, args.hold_s)
            await phase_post(session, url, emu_app.state.emulator, args.waiters, rng)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await emu.stop()
        await valkey.astop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--hold-s", type=float, default=15.0, help="phase 1 jobs' duration")
    parser.add_argument("--seed", type=int, default=1)
    a = parser.parse_args()
    started = time.monotonic()
    asyncio.run(main(a))
    print(f"({time.monotonic() - started:.0f} s; {os.cpu_count()} cores)")
