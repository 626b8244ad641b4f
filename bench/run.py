"""pushbridge against the naive alternatives, on loopback, in one run.

    python -m bench.run                         # all workloads, all variants
    python -m bench.run --workloads realistic --scale 0.1    # smaller and quicker

Variants: (a) pushbridge as configured by default, (b) the naive pattern (one asyncio
task per job polling every 1 s and POSTing the callback itself, no store),
(c) pushbridge with fixed 1 s polling, (d) the hazard rule (adaptive_hazard 0.1),
(e) the default on a store that served one pass before, (f) the default as
`serve --workers 2` (burst and scale only). Every variant runs against the same emulator
settings and the same receiver; the bridge, the emulator and Valkey are separate
processes, so CPU is measured per process (/proc). Prints a table and writes
bench/out/results.json (and the plot, with --plot).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.targets import report
from bench.workloads import WORKLOADS, Workload
from bridge.api.serving import start_server
from bridge.dev.receiver import Receiver
from bridge.store.embedded import EmbeddedValkey, free_port

OUT = Path(__file__).resolve().parent / "out"
API_KEY = "bench-key"
SECRET = "whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldC1iZW5jaA=="
SUBMIT_CONCURRENCY = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE = bool(os.environ.get("BENCH_PROFILE"))

# what an operator sets for a ~10-minute model: no poll in its first two minutes, a mean
# lag of 40 s (the default, 0.9 s, suits models of seconds): until durations are learned
# it polls every 80 s, about the poll load of the earlier setting (intervals growing with
# the job's age up to 3 minutes: 1,240 polls/s at 100,000 in flight)
SCALE_POLL = {"initial_delay_s": 120.0, "max_interval_s": 180.0, "target_lag_s": 40.0}
SCALE_SETTLE_S = 120.0  # after the last submit: the polls that came due meanwhile run

FIXED_1S = {
    "initial_delay_s": 1.0,
    "min_interval_s": 1.0,
    "max_interval_s": 1.0,
    "backoff_factor": 1.0,
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The pids whose parent is pid (the workers of `serve --workers N`)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (a supervisor and its workers)."""
    total = cpu_s(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += cpu_s(child)
    return total


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def bridge_config(store_url: str, port: int, emulator: str, poll: dict | None) -> dict:
    upstream: dict[str, Any] = {
        "url": f"{emulator}/infer/echo",
        "health_url": f"{emulator}/healthz",
    }
    if poll:
        upstream["poll"] = poll
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"url": store_url},
        "tenants": [
            {"name": "bench", "api_keys_env": "BENCH_KEY", "webhook_secret_env": "BENCH_SECRET"}
        ],
        "callbacks": {"allow_http": True, "allow_private_networks": True},
        "upstreams": {"echo": upstream},
        "log": {"format": "json", "level": "warning"},
    }


def start_profiler(pid: int, name: str) -> subprocess.Popen | None:
    """With BENCH_PROFILE=1, py-spy samples the bridge (and its workers) into
    bench/out/profile-NAME.txt: only samples holding the GIL, so a thread waiting in a
    C call (a resolver's, an idle pool's) does not count as busy."""
    if not PROFILE:
        return None
    OUT.mkdir(exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--gil",
            "--subprocesses",
            "--format",
            "raw",
            "-o",
            str(OUT / f"profile-{name}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def own_cpu_s() -> float:
    """CPU seconds of this (driver) process: the load generator and the receiver."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Procs:
    started: list[subprocess.Popen] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every live process started here, and of the driver."""
        out = {"driver": own_cpu_s()}
        for p in self.started:
            if p.poll() is None:
                out[self.names.get(p.pid, str(p.pid))] = tree_cpu_s(p.pid)
        return out

    def name(self, proc: Any, name: str) -> None:
        self.names[proc.pid] = name

    def spawn(
        self, *args: str, env: dict | None = None, stdout: Any = subprocess.DEVNULL
    ) -> subprocess.Popen:
        log = Path(tempfile.gettempdir()) / f"pushbridge-bench-{args[1].replace('.', '-')}.log"
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **(env or {})},
            stdout=stdout,
            stderr=log.open("ab"),
        )
        self.started.append(proc)
        self.names[proc.pid] = args[2] if args[:2] == ("-m", "bridge") else args[1]
        return proc

    def stop(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


async def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def redis_stats(client: aioredis.Redis) -> dict[str, float]:
    stats = await client.info("commandstats")
    mem = await client.info("memory")
    return {"commands": sum(v["calls"] for v in stats.values()), "used_memory": mem["used_memory"]}


def metric_samples(text: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def histogram_quantile(samples: dict, name: str, labels: dict, q: float) -> float | None:
    buckets = sorted(
        (float(dict(lbl)["le"]), v)
        for (n, lbl), v in samples.items()
        if n == f"{name}_bucket" and all(dict(lbl).get(k) == x for k, x in labels.items())
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= target)


@dataclass
class Run:
    """One variant on one workload."""

    variant: str
    workload: Workload
    work: Path
    procs: Procs = field(default_factory=Procs)
    receiver: Receiver = field(default_factory=lambda: Receiver([SECRET]))
    submit_s: list[float] = field(default_factory=list)
    mem_samples: list[tuple[int, int]] = field(default_factory=list)  # (stored jobs, bytes)
    bridge_workers: int = 1  # serve --workers N

    async def start_emulator(self) -> str:
        port = free_port()
        w = self.workload
        args = [
            "-m",
            "bridge",
            "emulator",
            "--port",
            str(port),
            "--duration-s",
            str(w.duration_s),
            "--seed",
            str(w.seed),
        ]
        if w.duration_p95_s:
            args += ["--duration-p95-s", str(w.duration_p95_s)]
        self.procs.spawn(*args)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz")
        return url

    async def submit_all(self, bridge_url: str, recv_url: str) -> None:
        """POST every job through the API as the workload says. aiohttp, not httpx: the
        load generator shares the 2 cores with what it measures, so it must be cheap."""
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(limit=SUBMIT_CONCURRENCY)
        async with aiohttp.ClientSession(
            base_url=bridge_url, headers=headers, connector=connector
        ) as client:

            async def one(i: int, at_s: float) -> None:
                await asyncio.sleep(max(0.0, started + at_s - time.perf_counter()))
                body = orjson.dumps(
                    {"upstream": "echo", "inputs": {"i": i}, "callback_url": f"{recv_url}/bench"}
                )
                async with gate:
                    t0 = time.perf_counter()
                    async with client.post("/v1/jobs", data=body) as r:
                        text = await r.text()
                    self.submit_s.append(time.perf_counter() - t0)
                    assert r.status == 202, text

            await asyncio.gather(*(one(i, at) for i, at in enumerate(self.workload.arrivals_s())))

    def delivered(self) -> int:
        return len({d.webhook_id for d in self.receiver.succeeded()})

    async def sample_memory(self, store: aioredis.Redis, base: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            used = (await store.info("memory"))["used_memory"]
            self.mem_samples.append((len(self.submit_s), used - base))
            await asyncio.sleep(0.5)

    def memory_per_job(self) -> float | None:
        """Store memory per stored job (in flight or retained) at the fullest sample."""
        peak = max(self.mem_samples, default=(0, 0))
        return peak[1] / peak[0] if peak[0] >= 100 else None

    async def wait_delivered(self, timeout_s: float) -> None:
        n = self.workload.jobs
        deadline = time.monotonic() + timeout_s
        while self.delivered() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def emulator_stats(self, url: str) -> dict:
        async with httpx.AsyncClient(timeout=120) as c:
            return (await c.get(f"{url}/_emulator/stats")).json()

    def first_arrivals(self, stats: dict) -> list[tuple[dict, float]]:
        """Per delivered event: its upstream future (emulator stats) and when its first
        successful callback arrived."""
        futures = stats["futures"]
        first: dict[str, tuple[dict, float]] = {}
        for d in self.receiver.succeeded():
            future = futures[d.event["data"]["upstream_id"]]
            first.setdefault(d.webhook_id, (future, d.arrived_at))
        return list(first.values())

    def lags(self, stats: dict) -> list[float]:
        return [arrived - f["ready_at"] for f, arrived in self.first_arrivals(stats)]


def summarize(run: Run, stats: dict, elapsed_s: float, cpu: float, extra: dict) -> dict:
    n = run.workload.jobs
    lags = run.lags(stats)
    return {
        "variant": run.variant,
        "workload": run.workload.name,
        "bridge_workers": run.bridge_workers,
        "jobs": n,
        "delivered": run.delivered(),
        "wall_s": round(elapsed_s, 1),
        "jobs_per_s": round(run.delivered() / elapsed_s, 1) if elapsed_s else None,
        "submit_p50_ms": _ms(pct(run.submit_s, 50)),
        "submit_p99_ms": _ms(pct(run.submit_s, 99)),
        "lag_p50_ms": _ms(pct(lags, 50)),
        "lag_p99_ms": _ms(pct(lags, 99)),
        "polls_per_job": round(stats["requests"].get("poll", 0) / n, 2),
        "cpu_s_per_job_ms": round(cpu / n * 1000, 3),
        **extra,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def start_stack(run: Run, poll: dict | None) -> tuple[Any, str, Any, Any, str]:
    """Valkey, emulator, receiver and a `pushbridge serve` process for one run."""
    store = EmbeddedValkey(run.work / f"valkey-{run.variant}", appendonly=True)
    store.start()
    run.procs.started.append(store.proc)  # type: ignore[arg-type]
    run.procs.name(store.proc, "store")
    emulator = await run.start_emulator()
    recv = await start_server(run.receiver.app())
    port = free_port()
    cfg = run.work / f"{run.variant}.yaml"
    cfg.write_text(yaml.safe_dump(bridge_config(store.url, port, emulator, poll)))
    env = {"BENCH_KEY": API_KEY, "BENCH_SECRET": SECRET}
    workers = str(run.bridge_workers)
    bridge = run.procs.spawn(
        "-m", "bridge", "serve", "--workers", workers, "--config", str(cfg), env=env
    )
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/readyz")
    for _ in range(200):  # every worker up (each answers /readyz once its store is ready)
        if run.bridge_workers == 1 or len(children(bridge.pid)) >= run.bridge_workers:
            break
        await asyncio.sleep(0.05)
    await scrape(url, run.bridge_workers)
    return store, emulator, recv, bridge, url


async def run_bridge(run: Run, poll: dict | None, settle_s: float) -> dict:
    store, emulator, recv, bridge, url = await start_stack(run, poll)
    profiler = start_profiler(bridge.pid, f"{run.variant}-{run.workload.name}")
    client = aioredis.Redis.from_url(store.url, decode_responses=True)
    before = await redis_stats(client)
    cpu0, all0 = tree_cpu_s(bridge.pid), run.procs.cpu()
    stop = asyncio.Event()
    sampler = asyncio.create_task(run.sample_memory(client, before["used_memory"], stop))
    t0 = time.perf_counter()
    try:
        await run.submit_all(url, recv.url)
        await run.wait_delivered(settle_s)
        elapsed = time.perf_counter() - t0
        cpu, all1 = tree_cpu_s(bridge.pid) - cpu0, run.procs.cpu()
        stop.set()
        await sampler
        after = await redis_stats(client)
        m = await scrape(url, run.bridge_workers)
        stats = await run.emulator_stats(emulator)
        await save_durations(client, f"{run.variant}-{run.workload.name}")
        save_jobs(run, stats)
    finally:
        stop_profiler(profiler)
        await client.aclose()
        await recv.stop()
        run.procs.stop()
    n = run.workload.jobs
    by_op = {
        dict(lbl)["op"]: v
        for (name, lbl), v in m.items()
        if name == "pushbridge_store_round_trips_total"
    }
    trips = sum(by_op.values())
    return summarize(
        run,
        stats,
        elapsed,
        cpu,
        {
            "redis_cmds_per_job": round((after["commands"] - before["commands"]) / n, 1),
            "redis_round_trips_per_job": round(trips / n, 2),
            "round_trips_by_op": {k: round(v / n, 2) for k, v in sorted(by_op.items())},
            "redis_bytes_per_job": _round(run.memory_per_job()),
            "due_lateness_p99_ms": _ms(
                histogram_quantile(m, "pushbridge_due_lateness_seconds", {"schedule": "due"}, 0.99)
            ),
            "cpu_share": cpu_share(all0, all1, elapsed),
            "deferrals_per_job": round(
                sum(
                    v for (name, _), v in m.items() if name == "pushbridge_delivery_deferrals_total"
                )
                / n,
                3,
            ),
            "attempts_per_job": {
                dict(lbl)["outcome"]: round(v / n, 3)
                for (name, lbl), v in m.items()
                if name == "pushbridge_delivery_attempts_total"
            },
        },
    )


def save_jobs(run: Run, stats: dict) -> None:
    """Per job: upstream ready time, callback arrival, polls (bench/out/jobs-*.json)."""
    rows = sorted((f["ready_at"], arrived, f["polls"]) for f, arrived in run.first_arrivals(stats))
    OUT.mkdir(exist_ok=True)
    (OUT / f"jobs-{run.variant}-{run.workload.name}.json").write_text(json.dumps(rows))


async def save_durations(client: aioredis.Redis, name: str) -> None:
    """The learned-duration histograms as the run left them (bench/out/durations-*.json)."""
    out: dict[str, int] = {}
    async for key in client.scan_iter(match="*:durations"):
        for k, v in (await client.hgetall(key)).items():
            out[k] = out.get(k, 0) + int(v)
    OUT.mkdir(exist_ok=True)
    (OUT / f"durations-{name}.json").write_text(json.dumps(out, indent=1, sort_keys=True))


def cpu_share(before: dict[str, float], after: dict[str, float], elapsed_s: float) -> dict:
    """Each process's share of one core over the run (2 cores here: the sum is ≤ 2)."""
    return {k: round((after[k] - before.get(k, 0.0)) / elapsed_s, 2) for k in after}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x)


async def run_naive(run: Run, settle_s: float) -> dict:
    emulator = await run.start_emulator()
    recv = await start_server(run.receiver.app())
    out_file = run.work / f"naive-{run.workload.name}.json"
    try:
        naive = run.procs.spawn(
            "-m",
            "bench.naive",
            "--emulator",
            emulator,
            "--receiver",
            recv.url,
            "--workload",
            run.workload.name,
            "--scale",
            str(run.workload.jobs / WORKLOADS[run.workload.name].jobs),
            "--out",
            str(out_file),
        )
        t0 = time.perf_counter()
        cpu = 0.0
        while naive.poll() is None and time.perf_counter() - t0 < settle_s + 120:
            cpu = cpu_s(naive.pid)
            await asyncio.sleep(0.2)
        if naive.poll() is None:  # gave up: report what was delivered by then
            naive.kill()
        await run.wait_delivered(5)
        elapsed = time.perf_counter() - t0
        done = out_file.exists()
        run.submit_s = orjson.loads(out_file.read_bytes())["submit_s"] if done else []
        stats = await run.emulator_stats(emulator)
    finally:
        await recv.stop()
        run.procs.stop()
    return summarize(
        run,
        stats,
        elapsed,
        cpu,
        {
            "redis_cmds_per_job": None,
            "redis_round_trips_per_job": None,
            "round_trips_by_op": None,
            "redis_bytes_per_job": None,
            "due_lateness_p99_ms": None,
        },
    )


def bucket_delta(before: dict, after: dict, name: str, labels: dict) -> dict:
    """The histogram samples of `name` that accrued between two scrapes."""
    out = {}
    for key, v in after.items():
        if key[0] == f"{name}_bucket" and all(dict(key[1]).get(k) == x for k, x in labels.items()):
            out[key] = v - before.get(key, 0.0)
    return out


async def scrape(url: str, workers: int = 1) -> dict:
    """The bridge's metrics, added up over its `workers` processes: under `serve --workers
    N` each scrape is answered by one of them (X-Pushbridge-Pid says which), so scrape on
    new connections until every one has answered."""
    by_pid: dict[str, dict] = {}
    for _ in range(400):
        async with httpx.AsyncClient(timeout=60) as c:  # a new connection: any worker
            r = await c.get(f"{url}/metrics")
        by_pid[r.headers.get("x-pushbridge-pid", "")] = metric_samples(r.text)
        if len(by_pid) >= workers:
            break
    else:
        raise RuntimeError(f"only {len(by_pid)} of {workers} workers answered /metrics")
    total: dict = {}
    for samples in by_pid.values():
        for key, v in samples.items():
            total[key] = total.get(key, 0.0) + v
    return total


async def run_scale(run: Run, window_s: float) -> dict:
    """(iii): many long futures in flight; the bridge mostly idle-polls. Measured over a
    window after all are submitted: bridge CPU, polls, due lateness, store memory per job."""
    store, _emulator, recv, bridge, url = await start_stack(run, SCALE_POLL)
    client = aioredis.Redis.from_url(store.url, decode_responses=True)
    try:
        base = (await redis_stats(client))["used_memory"]
        t0 = time.perf_counter()
        await run.submit_all(url, recv.url)
        submit_rate = run.workload.jobs / (time.perf_counter() - t0)
        await asyncio.sleep(min(SCALE_SETTLE_S, window_s * 2))
        n = run.bridge_workers
        m0, cpu0, r0 = await scrape(url, n), tree_cpu_s(bridge.pid), await redis_stats(client)
        await asyncio.sleep(window_s)
        m1, cpu1, r1 = await scrape(url, n), tree_cpu_s(bridge.pid), await redis_stats(client)
    finally:
        await client.aclose()
        await recv.stop()
        run.procs.stop()
    polls = sum(
        v - m0.get(k, 0.0)
        for k, v in m1.items()
        if k[0] == "pushbridge_upstream_requests_total" and dict(k[1])["kind"] == "poll"
    )
    lateness = bucket_delta(m0, m1, "pushbridge_due_lateness_seconds", {"schedule": "due"})
    n = run.workload.jobs
    return {
        "variant": run.variant,
        "workload": run.workload.name,
        "bridge_workers": run.bridge_workers,
        "jobs": n,
        "in_flight": n - run.delivered(),
        "submit_per_s": round(submit_rate, 1),
        "submit_p50_ms": _ms(pct(run.submit_s, 50)),
        "submit_p99_ms": _ms(pct(run.submit_s, 99)),
        "window_s": window_s,
        "bridge_cpu_share_idle": round((cpu1 - cpu0) / window_s, 3),
        "polls_per_s": round(polls / window_s, 1),
        "redis_cmds_per_s": round((r1["commands"] - r0["commands"]) / window_s, 1),
        "due_lateness_p99_ms": _ms(
            histogram_quantile(
                lateness, "pushbridge_due_lateness_seconds", {"schedule": "due"}, 0.99
            )
        ),
        "redis_bytes_per_inflight_job": round((r1["used_memory"] - base) / n),
    }


async def run_warm(run: Run, settle_s: float) -> dict:
    """Default configuration on a store that has served one pass of the same workload
    before (a bridge that has been running, restarted): the first pass is not measured."""
    first = Run(run.variant, run.workload, run.work, bridge_workers=run.bridge_workers)
    await run_bridge(first, None, settle_s)
    return await run_bridge(run, None, settle_s)


VARIANTS = {
    "a-pushbridge": lambda run, s: run_bridge(run, None, s),
    "b-naive-1s": run_naive,
    "c-pushbridge-1s": lambda run, s: run_bridge(run, FIXED_1S, s),
    "d-pushbridge-hazard-0.1": lambda run, s: run_bridge(run, {"adaptive_hazard": 0.1}, s),
    "e-pushbridge-warm": run_warm,
    "f-pushbridge-2-workers": lambda run, s: run_bridge(run, None, s),
}
WORKERS = {"f-pushbridge-2-workers": 2}  # serve --workers; others: --bridge-workers
ONLY = {  # variants run on some workloads only
    "f-pushbridge-2-workers": ("burst", "scale"),
}
SCALE_VARIANTS = ("a-pushbridge", "f-pushbridge-2-workers")


def runs_on(variant: str, workload: str) -> bool:
    if workload == "scale":
        return variant in SCALE_VARIANTS
    return workload in ONLY.get(variant, (workload,))


async def main_async(
    workloads: list[str],
    variants: list[str],
    scale: float,
    window_s: float = 60.0,
    bridge_workers: int = 1,
) -> list[dict]:
    results = []
    work = Path(tempfile.mkdtemp(prefix="pushbridge-bench-"))
    for wname in workloads:
        w = WORKLOADS[wname].scaled(scale)
        settle_s = 30 + w.duration_s * 10 + (w.duration_p95_s or 0) * 4
        for v in (v for v in variants if runs_on(v, wname)):
            print(f"… {wname} / {v} ({w.jobs} jobs)", file=sys.stderr, flush=True)
            run = Run(v, w, work, bridge_workers=WORKERS.get(v, bridge_workers))
            if wname == "scale":
                results.append(await run_scale(run, window_s=window_s))
            else:
                results.append(await VARIANTS[v](run, settle_s))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def print_table(results: list[dict]) -> None:
    cols = [k for k, v in results[0].items() if k != "jobs" and not isinstance(v, dict)]
    widths = {c: max(len(c), *(len(str(r.get(c))) for r in results)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in results:
        print("  ".join(str(r.get(c)).ljust(widths[c]) for c in cols))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="burst,realistic")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--scale", type=float, default=1.0, help="multiply job counts")
    p.add_argument(
        "--bridge-workers",
        type=int,
        default=1,
        help="serve --workers N for the pushbridge variants (f always runs 2)",
    )
    p.add_argument("--window-s", type=float, default=60.0, help="scale: measuring window")
    a = p.parse_args()
    import uvloop

    results = uvloop.run(
        main_async(
            a.workloads.split(","),
            a.variants.split(","),
            a.scale,
            a.window_s,
            a.bridge_workers,
        )
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    for kind in ("flow", "scale"):
        rows = [r for r in results if ("in_flight" in r) == (kind == "scale")]
        if rows:
            print_table(rows)
    print(report(results))
    return 0 if all(r.get("delivered", r["jobs"]) == r["jobs"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
