"""Waiting requests (CONTRACT §3 `Prefer: wait=N`): how soon 1,000 concurrent waiting
requests are answered once their jobs finish, and what a waiting request costs.

    python -m bench.wait --waiters 1000                       # octoai, no push
    python -m bench.wait --waiters 1000 --protocol replicate  # the provider pushes

Starts an embedded Valkey, an emulator (`pushbridge emulator`, its own process) and one
bridge (`pushbridge serve --workers 1`, its own process, role all), all on 127.0.0.1; jobs
have no callback_url (they are only read back); 10 short jobs are waited for first (a
warm-up: no figure counts the first use of a connection or client). The protocol:

- `octoai` (no push): the bridge polls as usual, so an answer follows the provider's
  finish by the poll schedule's lag.
- `replicate` (push): the bridge's `listen.public_url` is its own loopback URL, so it
  gives the emulator a per-job webhook (CONTRACT §5b) and the emulator calls back the
  moment it finishes a job; the push makes the job due at once. The poll schedule is
  deliberately slow (first poll 20 s after the submit, as in bench/push.py), so only a
  push can finish a job sooner. Replicate's rate limits (the protocol's defaults: 10
  creates and 50 polls a second) are off, as the emulator has none: 1,000 jobs are
  created at once and finish within 2 s, and each push costs a poll (bench/RESULTS.md,
  Push: the provider's limits bound push too).

Two phases:

1. GET /v1/jobs/{id}?wait=60: N requests wait on 10 jobs of `--hold-s` seconds. The
   bridge's resident memory is read (/proc/<pid>/status VmRSS) before and while all N
   wait: the difference per request is what a waiting request costs (its connection,
   request, task and waiter). Then the jobs finish and every answer's arrival is
   compared with its job's `completed_at` (the store's clock, the same machine) and with
   the moment the emulator finished it.
2. POST /v1/jobs with `Prefer: wait=60`: N concurrent requests, jobs of `--min-s` to
   `--max-s` seconds (uniform). Each answer's arrival is compared with its job's
   `completed_at` (the wake-up of the waiting request: notice, read, answer) and with
   the moment the emulator finished it (its `ready_at`: that also counts the bridge's
   polling lag without push, the push's path with it). With push, the path is split:
   the emulator's finish → its webhook sent (the emulator's own lag) → `completed_at`
   (push received, job due, claimed, polled, recorded) → the answer's arrival.

Prints the figures (and returns them, for tests); the store reads the bridge made per
waiting request (from its /metrics) show that waiting does not poll the store.
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.push import SLOW_POLL, cpu_s
from bench.run import OUT, start_profiler, stop_profiler
from bridge.store.embedded import EmbeddedValkey, free_port

KEY = "pb_bench_wait_key"
SECRET = "whsec_" + "YmVuY2gtd2FpdC1zZWNyZXQtMDEyMzQ1Njc4OWFi"
UPSTREAM_TOKEN = "bench-wait-token"
PROTOCOLS = ("octoai", "replicate")
NO_LIMITS = {"submit_per_s": None, "poll_per_s": None}  # the emulator has none
READS = 'pushbridge_store_round_trips_total{op="read"}'


@dataclass
class Options:
    protocol: str = "octoai"
    waiters: int = 1000
    hold_s: float = 15.0  # phase 1 jobs' duration
    min_s: float = 2.0  # phase 2 jobs' durations, uniform
    max_s: float = 4.0
    seed: int = 1
    quiet: bool = False


@dataclass
class Figures:
    """What one run measured (milliseconds unless named otherwise)."""

    options: Options
    kib_per_waiter: float = 0.0
    rss_mib: tuple[float, float] = (0.0, 0.0)
    get_store_ms: list[float] = field(default_factory=list)
    get_provider_ms: list[float] = field(default_factory=list)
    get_reads_per_waiter: float = 0.0
    post_answered: int = 0
    post_elapsed_s: float = 0.0
    post_store_ms: list[float] = field(default_factory=list)
    post_provider_ms: list[float] = field(default_factory=list)
    post_path_ms: dict[str, list[float]] = field(default_factory=dict)  # with push: PATH
    post_reads_per_waiter: float = 0.0
    polls: int = 0
    pushes_sent: int = 0
    post_cpu_s: dict[str, float] = field(default_factory=dict)  # per process, phase 2
    post_round_trips: dict[str, float] = field(default_factory=dict)  # per job, by op

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(text)


def bridge_config(store_url: str, port: int, emulator_url: str, opts: Options) -> dict:
    listen: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "max_waiters": max(10_000, opts.waiters),
    }
    upstream: dict[str, Any] = {"url": f"{emulator_url}/infer/echo", "submit_timeout_s": 10}
    if opts.protocol == "replicate":
        listen["public_url"] = f"http://127.0.0.1:{port}"
        upstream = {
            "protocol": "replicate",
            "url": f"{emulator_url}/v1",
            "model": "acme/echo",
            "token_env": "BENCH_UPSTREAM_TOKEN",
            "submit_timeout_s": 10,
            "poll": SLOW_POLL,
            "rate_limit": NO_LIMITS,
        }
    return {
        "listen": listen,
        "store": {"url": store_url, "key_prefix": "benchwait"},
        "tenants": [{"name": "b", "api_keys_env": "BENCH_KEY", "webhook_secret_env": "BENCH_SEC"}],
        "upstreams": {"echo": upstream},
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


async def round_trips(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The bridge's store round trips so far, by operation."""
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    prefix = 'pushbridge_store_round_trips_total{op="'
    trips = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            op = line[len(prefix) :].split('"', 1)[0]
            trips[op] = float(line.rsplit(" ", 1)[1])
    return trips


def pct(values_ms: list[float], q: float) -> float:
    v = sorted(values_ms)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def describe(label: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"{label}: none"
    return (
        f"{label}: p50 {pct(values_ms, 0.5):.0f} ms, p90 {pct(values_ms, 0.9):.0f} ms, "
        f"p99 {pct(values_ms, 0.99):.0f} ms, max {max(values_ms):.0f} ms (n={len(values_ms)})"
    )


async def wait_http(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: the process exited at start")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def emulator_futures(session: aiohttp.ClientSession, emulator_url: str) -> dict[str, Any]:
    """The emulator's own record per upstream id: ready_at (when it finished the job),
    pushed_at (when its webhook was sent), polls; and its request counts."""
    async with session.get(f"{emulator_url}/_emulator/stats") as r:
        return await r.json()


def upstream_body(duration_s: float) -> dict[str, Any]:
    return {"upstream": "echo", "inputs": {"_emulate": {"duration_s": duration_s}}}


async def phase_get(
    session: aiohttp.ClientSession, url: str, emulator_url: str, pid: int, fig: Figures
) -> None:
    waiters, hold_s = fig.options.waiters, fig.options.hold_s
    jobs = []
    for _ in range(10):
        async with session.post(f"{url}/v1/jobs", json=upstream_body(hold_s)) as r:
            jobs.append((await r.json())["id"])
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    reads_before = await metric(session, url, READS)

    async def one(i: int) -> tuple[float, dict[str, Any]]:
        async with session.get(f"{url}/v1/jobs/{jobs[i % 10]}", params={"wait": "60"}) as r:
            job = await r.json()
            return time.time() * 1000, job

    tasks = [asyncio.create_task(one(i)) for i in range(waiters)]
    deadline = time.monotonic() + hold_s - 1.0
    while await metric(session, url, "pushbridge_waiters ") < waiters:
        if time.monotonic() > deadline:
            raise RuntimeError("the waiters did not all register before the jobs finished")
        await asyncio.sleep(0.1)
    during = rss_bytes(pid)
    answers = await asyncio.gather(*tasks)
    reads = await metric(session, url, READS)
    futures = (await emulator_futures(session, emulator_url))["futures"]
    done = [(at, job) for at, job in answers if job["status"] == "completed"]
    fig.get_store_ms = [at - _ms(job["completed_at"]) for at, job in done]
    fig.get_provider_ms, path_ms, rows = split(done, futures)
    save(fig, "get", rows)
    fig.rss_mib = (before / 2**20, during / 2**20)
    fig.kib_per_waiter = (during - before) / waiters / 1024
    fig.get_reads_per_waiter = (reads - reads_before) / waiters
    fig.say(f"GET ?wait=60: {waiters} requests waiting on 10 jobs of {hold_s} s")
    fig.say(
        f"  bridge RSS {before / 2**20:.1f} MiB before, {during / 2**20:.1f} MiB with all "
        f"waiting: {fig.kib_per_waiter:.1f} KiB per waiting request "
        "(connection, request, task and waiter)"
    )
    fig.say("  " + describe("answered after the job was terminal in the store", fig.get_store_ms))
    fig.say("  " + describe("answered after the emulator finished", fig.get_provider_ms))
    say_push_path(fig, path_ms)
    fig.say(f"  store reads per waiting request: {fig.get_reads_per_waiter:.2f}")


PATH = {  # the push's path, per job: (from, to) of the times split() reads
    "emulator finished -> its webhook sent": ("ready_at", "pushed_at"),
    "webhook sent -> taken (push route, job due)": ("pushed_at", "push_taken_at"),
    "push taken -> completed_at (poll, record)": ("push_taken_at", "completed_at"),
}


def split(
    done: list[tuple[float, dict[str, Any]]], futures: dict[str, Any]
) -> tuple[list[float], dict[str, list[float]], list[dict[str, Any]]]:
    """Per answered job: answer's arrival - the emulator's finish; with push, the push's
    path (PATH); and the times per job (seconds since the epoch)."""
    provider_ms: list[float] = []
    path_ms: dict[str, list[float]] = {label: [] for label in PATH}
    rows = []
    for at, job in done:
        f = futures.get(job.get("upstream_id"))
        if f is None:
            continue
        row = {"answered_at": at / 1000, "completed_at": _ms(job["completed_at"]) / 1000, **f}
        rows.append(row)
        provider_ms.append(at - f["ready_at"] * 1000)
        if f.get("push_taken_at") is not None:
            for label, (a, b) in PATH.items():
                path_ms[label].append((row[b] - row[a]) * 1000)
    return provider_ms, {k: v for k, v in path_ms.items() if v}, rows


def save(fig: Figures, phase: str, rows: list[dict[str, Any]]) -> None:
    """The per-job times of a phase to bench/out/wait-<protocol>-<phase>.json."""
    if not fig.options.quiet:
        OUT.mkdir(exist_ok=True)
        (OUT / f"wait-{fig.options.protocol}-{phase}.json").write_bytes(orjson.dumps(rows))


def say_push_path(fig: Figures, path_ms: dict[str, list[float]]) -> None:
    if path_ms:
        fig.say("  the push's path, per job:")
        for label, values in path_ms.items():
            fig.say("    " + describe(label, values))


async def phase_post(
    session: aiohttp.ClientSession, url: str, emulator_url: str, pids: dict[str, int], fig: Figures
) -> None:
    opts = fig.options
    cpu0 = {name: cpu_s(pid) for name, pid in pids.items()} | {"driver": cpu_s()}
    profiled = os.environ.get("BENCH_PROFILE_PROCESS", "bridge")  # or emulator, store
    profiler = start_profiler(pids[profiled], f"wait-{opts.protocol}-{profiled}")
    rng = random.Random(opts.seed)
    polls_before = (await emulator_futures(session, emulator_url))["requests"].get("poll", 0)
    reads_before = await metric(session, url, READS)
    trips_before = await round_trips(session, url)

    async def one(duration_s: float) -> tuple[int, float, dict[str, Any]]:
        body = upstream_body(duration_s)
        async with session.post(f"{url}/v1/jobs", json=body, headers={"Prefer": "wait=60"}) as r:
            job = await r.json()
            return r.status, time.time() * 1000, job

    durations = [rng.uniform(opts.min_s, opts.max_s) for _ in range(opts.waiters)]
    started = time.monotonic()
    answers = await asyncio.gather(*(one(d) for d in durations))
    fig.post_elapsed_s = time.monotonic() - started
    fig.post_cpu_s = {name: cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
    fig.post_cpu_s["driver"] = cpu_s() - cpu0["driver"]
    stop_profiler(profiler)
    reads = await metric(session, url, READS)
    trips = await round_trips(session, url)
    fig.post_round_trips = {
        op: (n - trips_before.get(op, 0)) / opts.waiters for op, n in trips.items()
    }
    done = [(at, job) for status, at, job in answers if status == 200]
    fig.post_answered = len(done)
    stats = await emulator_futures(session, emulator_url)
    fig.post_store_ms = [at - _ms(job["completed_at"]) for at, job in done]
    fig.post_provider_ms, fig.post_path_ms, rows = split(done, stats["futures"])
    save(fig, "post", rows)
    fig.polls = stats["requests"].get("poll", 0) - polls_before
    fig.pushes_sent = stats["requests"].get("webhook_sent", 0)
    fig.post_reads_per_waiter = (reads - reads_before) / opts.waiters
    fig.say(
        f"POST Prefer: wait=60: {opts.waiters} concurrent requests, jobs of "
        f"{opts.min_s:g}-{opts.max_s:g} s ({fig.post_elapsed_s:.1f} s)"
    )
    fig.say(f"  answered 200 (terminal): {fig.post_answered} of {opts.waiters}")
    fig.say("  " + describe("answered after the emulator finished the job", fig.post_provider_ms))
    fig.say("  " + describe("answered after the job was terminal in the store", fig.post_store_ms))
    say_push_path(fig, fig.post_path_ms)
    fig.say(f"  upstream polls {fig.polls} ({fig.polls / opts.waiters:.2f} per job)")
    fig.say(f"  store reads per waiting request: {fig.post_reads_per_waiter:.2f}")
    trips_per_job = ", ".join(
        f"{op} {n:.2f}" for op, n in sorted(fig.post_round_trips.items()) if n
    )
    fig.say(f"  store round trips per job: {trips_per_job}")
    cpus = ", ".join(f"{k} {v:.1f} s" for k, v in fig.post_cpu_s.items())
    per_job_ms = fig.post_cpu_s["bridge"] / opts.waiters * 1000
    fig.say(f"  CPU: {cpus} (bridge {per_job_ms:.1f} ms per job)")


async def warm_up(session: aiohttp.ClientSession, url: str) -> None:
    """A few short jobs waited for, so no figure counts a first use: the emulator's
    webhook client (~70 ms to make: it loads the CA bundle), the connections."""

    async def one() -> None:
        body = upstream_body(0.2)
        async with session.post(f"{url}/v1/jobs", json=body, headers={"Prefer": "wait=60"}) as r:
            if r.status != 200:
                raise RuntimeError(f"warm-up job answered {r.status}: {await r.text()}")

    await asyncio.gather(*(one() for _ in range(10)))


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()


async def run(opts: Options) -> Figures:
    """One run: its own store, emulator and bridge; both phases."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    fig = Figures(opts)
    tmp = Path(tempfile.mkdtemp(prefix="pb-wait-"))
    valkey = EmbeddedValkey(tmp / "store", appendonly=False)
    await valkey.astart()
    emu_port, port = free_port(), free_port()
    emulator_url, url = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{port}"
    emulator = await spawn("emulator", "--protocol", opts.protocol, "--port", str(emu_port))
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(bridge_config(valkey.url, port, emulator_url, opts)))
    env = {"BENCH_KEY": KEY, "BENCH_SEC": SECRET, "BENCH_UPSTREAM_TOKEN": UPSTREAM_TOKEN}
    bridge = await spawn("serve", "--workers", "1", "--config", str(config), env=env)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        await wait_http(f"{emulator_url}/healthz", emulator)
        await wait_http(f"{url}/readyz", bridge)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=120),
            headers=headers,
        ) as session:
            await warm_up(session, url)
            await phase_get(session, url, emulator_url, bridge.pid, fig)
            assert valkey.proc is not None
            pids = {"bridge": bridge.pid, "emulator": emulator.pid, "store": valkey.proc.pid}
            await phase_post(session, url, emulator_url, pids, fig)
    finally:
        await stop(bridge)
        await stop(emulator)
        await valkey.astop()
    return fig


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="octoai")
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--hold-s", type=float, default=15.0, help="phase 1 jobs' duration")
    parser.add_argument("--min-s", type=float, default=2.0, help="phase 2 jobs' shortest")
    parser.add_argument("--max-s", type=float, default=4.0, help="phase 2 jobs' longest")
    parser.add_argument("--seed", type=int, default=1)
    a = parser.parse_args()
    t0 = time.monotonic()
    options = Options(a.protocol, a.waiters, a.hold_s, a.min_s, a.max_s, a.seed)
    push = "push" if a.protocol == "replicate" else "no push"
    print(f"protocol {a.protocol} ({push}); load average {os.getloadavg()[0]:.1f} at start")
    asyncio.run(run(options))
    load = os.getloadavg()[0]
    print(f"({time.monotonic() - t0:.0f} s; {os.cpu_count()} cores, load average {load:.1f})")
