"""Push from the provider (CONTRACT §5b): delivery lag and polls per job when the
replicate emulator calls back per job, with a deliberately slow poll schedule.

    python -m bench.push                                  # 1,000 jobs at 10 a second
    python -m bench.push --rate 100 --raised-limits       # 1,000 jobs at 100 a second
    python -m bench.push --jobs 300                       # fewer

Each run starts its own embedded Valkey, the replicate emulator (`pushbridge emulator
--protocol replicate`, its own process) and one bridge (`pushbridge serve --workers 1`,
its own process) whose `listen.public_url` is its own loopback URL, so the emulator's
webhooks reach it; the receiver and the load generator run in this process. Jobs last
1-5 s (uniform, per job `_emulate.duration_s`) and are submitted at `--rate` a second.
The upstream's first poll comes 20 s after the submit, then every 20 s (`initial_delay_s`
= `min_interval_s` = 20, not adaptive, `push_slowdown` 1), so only a push can deliver a
job in less than ~15 s.

The replicate protocol's default rate limits are Replicate's documented ones (600 creates
and 3,000 other requests a minute: 10 and 50 a second), so the default rate is 10 jobs a
second; `--raised-limits` (1,000 a second each, as for an account whose limits were
raised; the emulator has none) allows more.

Two runs: every push sent; then the pushes of `--lose` of the jobs (drawn at random) are
never sent (`_emulate.lose_webhook`), so those jobs are finished by the 20 s safety poll.
Per run: delivered, delivery lag (the callback's first arrival at the receiver minus the
moment the emulator finished the job) p50/p99/max for all jobs and split pushed/lost,
upstream polls per job (the emulator's count), CPU seconds per process. The per-job
figures go to bench/out/push-<run>.json.
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
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bridge.api.serving import start_server
from bridge.dev.receiver import Receiver
from bridge.store.embedded import EmbeddedValkey, free_port

OUT = Path(__file__).resolve().parent / "out"
API_KEY = "pb_bench_push_key"
SECRET = "whsec_YmVuY2gtcHVzaC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2Q="
ENV = {"BENCH_KEY": API_KEY, "BENCH_SEC": SECRET, "BENCH_UPSTREAM_TOKEN": "bench-push-token"}
SLOW_POLL = {
    "initial_delay_s": 20.0,
    "min_interval_s": 20.0,
    "max_interval_s": 20.0,
    "adaptive": False,
    "push_slowdown": 1.0,
}
RAISED_LIMITS = {"submit_per_s": 1000.0, "poll_per_s": 1000.0}
SUBMIT_CONCURRENCY = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")


def bridge_config(store_url: str, port: int, emulator_url: str, raised: bool) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "protocol": "replicate",
        "url": f"{emulator_url}/v1",
        "model": "acme/echo",
        "token_env": "BENCH_UPSTREAM_TOKEN",
        "poll": SLOW_POLL,
    }
    if raised:
        upstream["rate_limit"] = RAISED_LIMITS
    return {
        "listen": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "store": {"url": store_url, "key_prefix": "benchpush"},
        "tenants": [{"name": "b", "api_keys_env": "BENCH_KEY", "webhook_secret_env": "BENCH_SEC"}],
        "callbacks": {"allow_http": True, "allow_private_networks": True},
        "upstreams": {"rep": upstream},
        "log": {"format": "json", "level": os.environ.get("BENCH_LOG_LEVEL", "warning")},
    }


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds used so far by a process (this one when pid is None)."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q / 100 * len(v)))] if v else float("nan")


def describe(values_s: list[float]) -> str:
    if not values_s:
        return "none"
    ms = [x * 1000 for x in values_s]
    return f"p50 {pct(ms, 50):.0f} ms, p99 {pct(ms, 99):.0f} ms, max {max(ms):.0f} ms (n={len(ms)})"


@dataclass
class Job:
    duration_s: float
    lose_push: bool
    id: str = ""
    lag_s: float | None = None  # first callback's arrival minus the emulator's finish
    polls: int | None = None


@dataclass
class Result:
    label: str
    jobs: list[Job]
    polls: int = 0
    pushes_received: float = 0.0
    pushes_sent: int = 0
    wall_s: float = 0.0
    submit_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def lags(self, lost: bool | None = None) -> list[float]:
        return [
            j.lag_s
            for j in self.jobs
            if j.lag_s is not None and (lost is None or j.lose_push == lost)
        ]

    def print(self) -> None:
        n = len(self.jobs)
        lost = sum(j.lose_push for j in self.jobs)
        print(f"{self.label}: {n} jobs of 1-5 s, {lost} pushes lost ({self.wall_s:.0f} s)")
        print(f"  delivered {len(self.lags())} of {n}")
        print(f"  delivery lag, all jobs:    {describe(self.lags())}")
        if lost:
            print(f"  delivery lag, pushed jobs: {describe(self.lags(False))}")
            print(f"  delivery lag, lost pushes: {describe(self.lags(True))}")
        print(
            f"  upstream polls per job {self.polls / n:.3f}; pushes sent {self.pushes_sent}, "
            f"received {self.pushes_received:.0f}"
        )
        cpus = ", ".join(f"{k} {v:.1f} s" for k, v in self.cpu_s.items())
        print(f"  CPU: {cpus} (over {self.wall_s:.0f} s)")
        submit_ms = [s * 1000 for s in self.submit_s]
        print(
            f"  submit answered in p50 {pct(submit_ms, 50):.1f} ms, p99 {pct(submit_ms, 99):.1f} ms"
        )

    def save(self, name: str) -> None:
        OUT.mkdir(exist_ok=True)
        (OUT / f"push-{name}.json").write_bytes(orjson.dumps([vars(j) for j in self.jobs]))


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    log = Path(tempfile.gettempdir()) / f"pushbridge-bench-push-{args[0]}.log"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


async def wait_http(session: aiohttp.ClientSession, url: str, proc: Any) -> None:
    for _ in range(600):
        if proc.returncode is not None:
            raise RuntimeError(f"{url}: the process exited at start")
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def submit_all(
    session: aiohttp.ClientSession, url: str, hook: str, jobs: list[Job], rate: float
) -> list[float]:
    """POST every job at `rate` a second; how long each took to be answered."""
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    started = time.perf_counter()
    took: list[float] = []

    async def one(i: int, job: Job) -> None:
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        emulate = {"duration_s": job.duration_s, "lose_webhook": job.lose_push}
        body = {"upstream": "rep", "inputs": {"i": i, "_emulate": emulate}, "callback_url": hook}
        async with gate:
            t0 = time.perf_counter()
            async with session.post(f"{url}/v1/jobs", data=orjson.dumps(body)) as r:
                answer = await r.json()
            took.append(time.perf_counter() - t0)
        if r.status != 202:
            raise RuntimeError(f"submit answered {r.status}: {answer}")
        job.id = answer["id"]

    await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs)))
    return took


def first_arrivals(receiver: Receiver) -> dict[str, tuple[float, str]]:
    """Per job id: when its first successful callback arrived, and its upstream id."""
    first: dict[str, tuple[float, str]] = {}
    for d in receiver.succeeded():
        data = d.event["data"]
        first.setdefault(data["id"], (d.arrived_at, data["upstream_id"]))
    return first


async def report_missing(session: aiohttp.ClientSession, url: str, jobs: list[Job]) -> None:
    """What the bridge says of (up to 10) jobs whose callback did not arrive."""
    for job in [j for j in jobs if j.lag_s is None][:10]:
        async with session.get(f"{url}/v1/jobs/{job.id}") as r:
            print(f"  not delivered: {job} -> {await r.text()}")


@dataclass
class Stack:
    valkey: EmbeddedValkey
    emulator: asyncio.subprocess.Process
    bridge: asyncio.subprocess.Process
    emulator_url: str
    url: str

    def pids(self) -> dict[str, int]:
        assert self.valkey.proc is not None
        return {
            "bridge": self.bridge.pid,
            "emulator": self.emulator.pid,
            "store": self.valkey.proc.pid,
        }

    async def stop(self) -> None:
        for proc in (self.bridge, self.emulator):
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        await self.valkey.astop()


async def start_stack(raised_limits: bool) -> Stack:
    work = Path(tempfile.mkdtemp(prefix="pb-push-"))
    valkey = EmbeddedValkey(work / "store", appendonly=False)
    await valkey.astart()
    emu_port, port = free_port(), free_port()
    emu_url = f"http://127.0.0.1:{emu_port}"
    emulator = await spawn("emulator", "--protocol", "replicate", "--port", str(emu_port))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(bridge_config(valkey.url, port, emu_url, raised_limits)))
    bridge = await spawn("serve", "--workers", "1", "--config", str(config), env=ENV)
    return Stack(valkey, emulator, bridge, emu_url, f"http://127.0.0.1:{port}")


async def run(result: Result, rate: float, timeout_s: float, raised_limits: bool) -> None:
    stack = await start_stack(raised_limits)
    receiver = Receiver([SECRET])
    recv = await start_server(receiver.app())
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as session:
            await wait_http(session, f"{stack.emulator_url}/healthz", stack.emulator)
            await wait_http(session, f"{stack.url}/readyz", stack.bridge)
            started, cpu0 = time.monotonic(), {k: cpu_s(p) for k, p in stack.pids().items()}
            cpu0["driver"] = cpu_s()
            result.submit_s = await submit_all(
                session, stack.url, f"{recv.url}/hook", result.jobs, rate
            )
            n = len(result.jobs)
            await receiver.wait_for(lambda: len(first_arrivals(receiver)) >= n, timeout_s)
            result.wall_s = time.monotonic() - started
            result.cpu_s = {k: cpu_s(p) - cpu0[k] for k, p in stack.pids().items()}
            result.cpu_s["driver"] = cpu_s() - cpu0["driver"]
            async with session.get(f"{stack.emulator_url}/_emulator/stats") as r:
                stats = await r.json()
            result.pushes_received = await metric(
                session, stack.url, "pushbridge_pushes_received_total"
            )
            measure(result, stats, first_arrivals(receiver))
            await report_missing(session, stack.url, result.jobs)
    finally:
        await recv.stop()
        await stack.stop()


def measure(result: Result, stats: dict[str, Any], arrivals: dict[str, tuple[float, str]]) -> None:
    futures = stats["futures"]
    for job in result.jobs:
        if job.id in arrivals:
            arrived_at, upstream_id = arrivals[job.id]
            job.lag_s = arrived_at - futures[upstream_id]["ready_at"]
            job.polls = futures[upstream_id]["polls"]
    result.polls = stats["requests"].get("poll", 0)
    result.pushes_sent = stats["requests"].get("webhook_sent", 0)


def draw_jobs(n: int, lose: float, rng: random.Random) -> list[Job]:
    return [Job(rng.uniform(1.0, 5.0), rng.random() < lose) for _ in range(n)]


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    rng = random.Random(args.seed)
    timeout_s = args.jobs / args.rate + 90
    limits = "raised limits" if args.raised_limits else "Replicate's default limits"
    print(f"{args.jobs} jobs at {args.rate:g} a second, {limits}; first poll after 20 s")
    runs = [("all", "every push sent", 0.0), ("lost", f"{args.lose:.0%} of pushes lost", args.lose)]
    for name, label, lose in runs:
        result = Result(label, draw_jobs(args.jobs, lose, rng))
        await run(result, args.rate, timeout_s, args.raised_limits)
        result.print()
        result.save(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="jobs submitted a second")
    parser.add_argument(
        "--raised-limits",
        action="store_true",
        help="1,000 creates and polls a second instead of Replicate's default 10 and 50",
    )
    parser.add_argument("--lose", type=float, default=0.2, help="share of pushes lost, run 2")
    parser.add_argument("--seed", type=int, default=1)
    a = parser.parse_args()
    t0 = time.monotonic()
    asyncio.run(main(a))
    load = os.getloadavg()[0]
    print(f"({time.monotonic() - t0:.0f} s; {os.cpu_count()} cores, load average {load:.1f})")
