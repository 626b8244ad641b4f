"""Scale-out: jobs/s and store CPU per job, 1 and 2 bridge processes, over a single node and
over a local cluster (3 masters + 3 replicas), with and without replica acknowledgements.

    python -m bench.scaleout --jobs 2000                      # every variant
    python -m bench.scaleout --jobs 2000 --variants cluster-2,single-1

Each variant starts its store, `pushbridge emulator` (jobs of --duration-s) and 1 or 2
`pushbridge serve` processes on 127.0.0.1, submits --jobs jobs through the API (64 at a
time, spread over the processes) and waits until every callback arrived at the receiver
in this process. jobs/s = jobs / (first submit → last callback). CPU is read from /proc
for every store node and bridge process. Also prints how the partitions' keys spread over
the masters. Every process shares this machine's cores: on 2 cores, the figures say where
the time goes more than what more machines would give (see bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from redis.crc import key_slot

from bench.run import SECRET, Procs, cpu_s, wait_http
from bridge.api.serving import start_server
from bridge.dev.receiver import Receiver
from bridge.store.embedded import EmbeddedValkey, free_port
from bridge.store.embedded_cluster import EmbeddedCluster
from bridge.store.keys import Keys

API_KEY = "scaleout-key"
CONCURRENCY = 64
PARTITIONS = 16


@dataclass(frozen=True)
class Variant:
    name: str
    store: str  # single | single+replica | cluster
    bridges: int
    replica_ack: str = "wait"


VARIANTS = [
    Variant("single-1", "single", 1),
    Variant("single-2", "single", 2),
    Variant("single+replica-1", "single+replica", 1),
    Variant("single+replica-1-ack-off", "single+replica", 1, "off"),
    Variant("cluster-1", "cluster", 1),
    Variant("cluster-2", "cluster", 2),
    Variant("cluster-1-ack-off", "cluster", 1, "off"),
    Variant("cluster-2-ack-off", "cluster", 2, "off"),
]


class Store:
    """The variant's store: its URL, whether it is a cluster, its server processes."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.nodes: list[EmbeddedValkey] = []
        self.cluster: EmbeddedCluster | None = None
        if kind == "cluster":
            self.cluster = EmbeddedCluster(work / "cluster", appendonly=True)
        else:
            master = EmbeddedValkey(work / "m", extra_args=("--repl-diskless-sync-delay", "0"))
            self.nodes.append(master)
            if kind == "single+replica":
                self.nodes.append(
                    EmbeddedValkey(
                        work / "r", extra_args=("--replicaof", "127.0.0.1", str(master.port))
                    )
                )

    @property
    def url(self) -> str:
        return self.cluster.url if self.cluster else self.nodes[0].url

    def start(self) -> None:
        if self.cluster:
            self.cluster.start()
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        if self.cluster:
            self.cluster.stop()
        for node in self.nodes:
            node.kill()

    def pids(self) -> list[int]:
        if self.cluster:
            return [n.proc.pid for n in self.cluster.nodes if n.proc]
        return [n.proc.pid for n in self.nodes if n.proc]

    def master_pids(self) -> list[int]:
        if self.cluster:
            masters = set(self.cluster.roles())
            return [n.proc.pid for n in self.cluster.nodes if n.proc and n.address in masters]
        return [n.proc.pid for n in self.nodes[:1] if n.proc]

    def masters(self) -> list[redis.Redis]:
        if self.cluster:
            return [self.cluster.node(m).client() for m in self.cluster.roles()]
        return [redis.Redis.from_url(self.nodes[0].url, decode_responses=True)]


def bridge_config(v: Variant, store: Store, port: int, emulator: str) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {
            "url": store.url,
            "cluster": store.cluster is not None,
            "partitions": PARTITIONS,
            "replica_ack": v.replica_ack,
        },
        "tenants": [
            {"name": "bench", "api_keys_env": "BENCH_KEY", "webhook_secret_env": "BENCH_SECRET"}
        ],
        "callbacks": {"allow_http": True, "allow_private_networks": True},
        "upstreams": {
            "echo": {
                "url": f"{emulator}/infer/echo",
                "health_url": f"{emulator}/healthz",
                "poll": {"initial_delay_s": 0.2, "min_interval_s": 0.2, "max_interval_s": 1},
            }
        },
        "log": {"format": "json", "level": "warning"},
    }


async def submit_all(urls: list[str], jobs: int, hook: str) -> int:
    gate = asyncio.Semaphore(CONCURRENCY)
    clients = [
        httpx.AsyncClient(base_url=u, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        for u in urls
    ]
    retries = 0

    async def one(i: int) -> None:
        nonlocal retries
        body = {"upstream": "echo", "inputs": {"i": i}, "callback_url": hook}
        async with gate:
            while True:
                r = await clients[i % len(clients)].post("/v1/jobs", json=body)
                if r.status_code == 202:
                    return
                retries += 1
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(one(i) for i in range(jobs)))
    finally:
        for c in clients:
            await c.aclose()
    return retries


def keys_per_master(store: Store) -> list[int]:
    counts = []
    for client in store.masters():
        with client:
            counts.append(int(client.dbsize()))
    return counts


def partitions_per_master(store: Store) -> list[int]:
    """How many of the PARTITIONS partitions each master owns (by the slot of their tag)."""
    if store.cluster is None:
        return [PARTITIONS]
    keys = Keys("pushbridge", PARTITIONS)
    with store.cluster.nodes[0].client() as c:
        shards = c.execute_command("CLUSTER", "SHARDS")
    owners: Counter[int] = Counter()
    for p in range(PARTITIONS):
        slot = key_slot(keys.fence(p).encode())
        for i, shard in enumerate(shards):
            s = shard["slots"]
            if any(a <= slot <= b for a, b in zip(s[::2], s[1::2], strict=True)):
                owners[i] += 1
    return [owners[i] for i in range(len(shards)) if shard_has_slots(shards[i])]


def shard_has_slots(shard: dict) -> bool:
    return bool(shard.get("slots"))


async def run_variant(v: Variant, jobs: int, duration_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pushbridge-scaleout-"))
    store = Store(v.store, work)
    await asyncio.to_thread(store.start)
    procs = Procs()
    receiver = Receiver([SECRET])
    recv = await start_server(receiver.app())
    env = {"BENCH_KEY": API_KEY, "BENCH_SECRET": SECRET}
    try:
        emu_port = free_port()
        procs.spawn(
            "-m", "bridge", "emulator", "--port", str(emu_port), "--duration-s", str(duration_s)
        )
        emulator = f"http://127.0.0.1:{emu_port}"
        await wait_http(f"{emulator}/healthz")
        urls = []
        bridges = []
        for _ in range(v.bridges):
            port = free_port()
            path = work / f"bridge-{port}.yaml"
            path.write_text(yaml.safe_dump(bridge_config(v, store, port, emulator)))
            bridges.append(procs.spawn("-m", "bridge", "serve", "--config", str(path), env=env))
            urls.append(f"http://127.0.0.1:{port}")
        for u in urls:
            await wait_http(f"{u}/readyz")
        masters = store.master_pids()
        store_cpu0 = sum(cpu_s(p) for p in store.pids())
        master_cpu0 = sum(cpu_s(p) for p in masters)
        bridge_cpu0 = sum(cpu_s(b.pid) for b in bridges)
        t0 = time.monotonic()
        retries = await submit_all(urls, jobs, f"{recv.url}/hook")
        submitted_s = time.monotonic() - t0
        while len({d.webhook_id for d in receiver.succeeded()}) < jobs:
            if time.monotonic() - t0 > 600:
                raise RuntimeError("not every callback arrived within 600 s")
            await asyncio.sleep(0.05)
        elapsed_s = time.monotonic() - t0
        store_cpu = sum(cpu_s(p) for p in store.pids()) - store_cpu0
        master_cpu = sum(cpu_s(p) for p in masters) - master_cpu0
        bridge_cpu = sum(cpu_s(b.pid) for b in bridges) - bridge_cpu0
        return {
            "variant": v.name,
            "jobs/s": round(jobs / elapsed_s, 1),
            "submits/s": round(jobs / submitted_s, 1),
            "store CPU ms/job": round(1000 * store_cpu / jobs, 3),
            "masters CPU ms/job": round(1000 * master_cpu / jobs, 3),
            "bridge CPU ms/job": round(1000 * bridge_cpu / jobs, 3),
            "503 retries": retries,
            "partitions per master": partitions_per_master(store),
            "keys per master": keys_per_master(store),
        }
    finally:
        procs.stop()
        await recv.stop()
        await asyncio.to_thread(store.stop)


async def main_async(names: list[str], jobs: int, duration_s: float) -> list[dict[str, Any]]:
    chosen = [v for v in VARIANTS if v.name in names] if names else VARIANTS
    results = []
    for v in chosen:
        result = await run_variant(v, jobs, duration_s)
        print(result, flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--duration-s", type=float, default=0.2, help="emulated job duration")
    p.add_argument("--variants", default="", help="comma-separated names (default: all)")
    args = p.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    results = asyncio.run(main_async(names, args.jobs, args.duration_s))
    print()
    cols = list(results[0])
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
