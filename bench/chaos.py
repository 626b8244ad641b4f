"""Chaos run: several bridge replicas over one store, under fire; nothing accepted is lost.

    python -m bench.chaos --jobs 1000 --replicas 2 --kills 6
    python -m bench.chaos --jobs 1000 --replicas 2 --kills 6 --cluster

Starts an embedded Valkey (append-only), the upstream emulator with failures
(503 on ~20 % of polls, 429 + Retry-After on ~5 %, 503 on ~10 % of submits,
~5 % of futures expire) and a receiver with failures (500 on ~30 % of attempts,
~3 % hang past the timeout, 410 on one path), all on 127.0.0.1. Replicas are real
`pushbridge serve` processes; they are kill -9'd at random moments and restarted,
and the store is restarted once. With --cluster the store is a local cluster (3 masters,
3 replicas, AOF) and, instead of the restart, a master is killed with SIGKILL after every
few replica kills: its replica takes over, and the killed node is started again (it
rejoins as a replica). Prints accepted, terminal events delivered, lost, wrong events,
signature failures and duplicates; exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bridge.api.serving import start_server
from bridge.delivery.signing import new_webhook_secret
from bridge.dev.emulators.octoai import EmulatorSettings, create_emulator_app
from bridge.dev.receiver import Receiver, Reply
from bridge.store.embedded import EmbeddedValkey, free_port
from bridge.store.embedded_cluster import EmbeddedCluster

GONE_PATH = "/gone"


@dataclass
class Replica:
    config_path: Path
    port: int
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--workers",
            "1",
            "--config",
            str(self.config_path),
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self) -> int | None:
        """SIGTERM and the exit code; a replica that had died on its own says 'died: N'."""
        if self.proc is None:
            return None
        if self.proc.returncode is not None:
            return f"died: {self.proc.returncode}"  # type: ignore[return-value]
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


@dataclass
class Tally:
    accepted: dict[str, str] = field(default_factory=dict)  # job id → callback path
    kills: int = 0
    store_restarts: int = 0
    master_kills: int = 0
    submit_retries: int = 0


def bridge_config(
    store_url: str, port: int, emulator_url: str, cluster: bool = False
) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"url": store_url, "key_prefix": "chaos", "cluster": cluster},
        "tenants": [
            {"name": "chaos", "api_keys_env": "CHAOS_KEY", "webhook_secret_env": "CHAOS_SECRET"}
        ],
        "callbacks": {
            "allow_http": True,
            "allow_private_networks": True,
            "timeout_s": 2,
            "retry_schedule_s": [0.5, 1, 1, 2, 2, 2, 2, 2, 2, 2],
        },
        "upstreams": {
            "echo": {
                "url": f"{emulator_url}/infer/echo",
                "health_url": f"{emulator_url}/healthz",
                "submit_timeout_s": 2,
                "poll": {
                    "initial_delay_s": 0.3,
                    "min_interval_s": 0.3,
                    "max_interval_s": 2,
                    "deadline_s": 120,
                    "timeout_s": 2,
                },
            }
        },
        "worker": {"lease_s": 3, "max_idle_s": 0.5, "health_interval_s": 1, "shutdown_grace_s": 2},
        "log": {"format": "json", "level": "warning"},
    }


def receiver_chooser(rng: random.Random, timeout_s: float) -> Any:
    def choose(path: str) -> Reply:
        if path == GONE_PATH:
            return Reply(410)
        r = rng.random()
        if r < 0.30:
            return Reply(500)
        if r < 0.33:
            return Reply(200, delay_s=timeout_s + 1)  # hangs past the timeout
        return Reply(200)

    return choose


async def submit_one(
    clients: list[httpx.AsyncClient], i: int, body: dict, tally: Tally, rng: random.Random
) -> None:
    key = f"chaos-{i}"
    for attempt in range(2000):
        client = clients[(i + attempt) % len(clients)]
        try:
            r = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if r.status_code in (200, 202):
                tally.accepted[r.json()["id"]] = body["callback_url"].rsplit("/", 1)[1]
                return
            if r.status_code not in (503,):
                raise RuntimeError(f"unexpected answer {r.status_code}: {r.text}")
        except httpx.HTTPError:
            pass
        tally.submit_retries += 1
        await asyncio.sleep(0.05 + rng.random() * 0.1)
    raise RuntimeError(f"job {i} was never accepted")


async def submitter(
    replicas: list[Replica],
    jobs: int,
    receiver_url: str,
    key: str,
    tally: Tally,
    rng: random.Random,
    rate_per_s: float,
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=r.url, headers=headers, timeout=5) for r in replicas]
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        path = GONE_PATH if i % 50 == 7 else f"/hook-{i % 5}"
        body = {"upstream": "echo", "inputs": {"i": i}, "callback_url": receiver_url + path}
        async with gate:
            await submit_one(clients, i, body, tally, rng)

    tasks: list[asyncio.Task] = []
    try:
        for i in range(jobs):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(1 / rate_per_s)
        await asyncio.gather(*tasks)
    finally:  # on a failure, no submit goes on with a closed client
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()


async def monkey(
    replicas: list[Replica],
    store: EmbeddedValkey | EmbeddedCluster,
    kills: int,
    tally: Tally,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    hit_store_after = max(1, kills // 2)
    while not stop.is_set() or tally.kills < kills:
        await asyncio.sleep(rng.uniform(0.8, 2.5))
        victim = rng.choice(replicas)
        await victim.kill()  # kill -9 at a random moment
        tally.kills += 1
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        await victim.start()
        if isinstance(store, EmbeddedCluster):
            if tally.kills % hit_store_after == 0:
                await kill_a_master(store, rng)
                tally.master_kills += 1
        elif tally.kills == hit_store_after and not tally.store_restarts:
            await asyncio.to_thread(store.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(store.start)
            tally.store_restarts += 1
        if tally.kills >= kills and stop.is_set():
            return


async def kill_a_master(cluster: EmbeddedCluster, rng: random.Random) -> None:
    """kill -9 of a master; once its replica has taken over, the node is started again and
    rejoins as a replica (so that the next master killed has a replica too)."""
    await asyncio.to_thread(cluster.wait_healthy, 60)
    victim = cluster.node(rng.choice(sorted(cluster.roles())))
    cluster.kill(victim)
    await asyncio.sleep(rng.uniform(2.0, 4.0))  # the failover: node timeout + election
    await asyncio.to_thread(cluster.restart, victim)


def analyse(tally: Tally, receiver: Receiver) -> dict[str, Any]:
    by_id: dict[str, list] = defaultdict(list)
    for d in receiver.deliveries:
        by_id[d.webhook_id].append(d)
    ok_counts = Counter(d.webhook_id for d in receiver.succeeded())
    lost, wrong = [], 0
    for job_id, path in tally.accepted.items():
        wid = "msg_" + job_id[4:]
        seen = by_id.get(wid, [])
        if (path == GONE_PATH[1:] and not seen) or (path != GONE_PATH[1:] and not ok_counts[wid]):
            lost.append(job_id)
    for wid, ds in by_id.items():
        events = {(d.event["type"], d.event["data"]["id"]) for d in ds}
        if len(events) != 1 or next(iter(events))[1][4:] != wid[4:]:
            wrong += 1
    dups = sum(1 for c in ok_counts.values() if c > 1)
    return {
        "accepted": len(tally.accepted),
        "terminal events delivered": len(ok_counts),
        "gone path (410, not retried)": sum(
            1 for p in tally.accepted.values() if p == GONE_PATH[1:]
        ),
        "lost": len(lost),
        "wrong events": wrong,
        "signature failures": sum(1 for d in receiver.deliveries if d.verified is False),
        "duplicates (same webhook-id twice)": dups,
        "duplicate rate": f"{dups / max(1, len(ok_counts)):.2%}",
        "attempts seen by receiver": len(receiver.deliveries),
        "replica kill -9s": tally.kills,
        "store restarts": tally.store_restarts,
        "store master kill -9s (cluster)": tally.master_kills,
        "submit retries (503 / conn refused)": tally.submit_retries,
        "lost ids": lost[:10],
    }


async def wait_settled(tally: Tally, receiver: Receiver, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if analyse(tally, receiver)["lost"] == 0:
            return
        await asyncio.sleep(0.5)


async def run(
    jobs: int,
    n_replicas: int,
    kills: int,
    seed: int,
    rate_per_s: float,
    settle_s: float,
    cluster: bool = False,
) -> dict[str, Any]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="pushbridge-chaos-"))
    env = {"CHAOS_KEY": "chaos-key-" + os.urandom(6).hex(), "CHAOS_SECRET": new_webhook_secret()}
    store: EmbeddedValkey | EmbeddedCluster
    if cluster:
        store = EmbeddedCluster(work / "cluster", appendonly=True)
    else:
        store = EmbeddedValkey(work / "store", port=free_port(), appendonly=True)
    store.start()
    emu = await start_server(
        create_emulator_app(
            EmulatorSettings(
                duration_s=1.0,
                duration_p95_s=4.0,
                poll_503_rate=0.20,
                poll_429_rate=0.05,
                submit_503_rate=0.10,
                expire_rate=0.05,
                retry_after_s=1,
                seed=seed,
            )
        )
    )
    receiver = Receiver([env["CHAOS_SECRET"]])
    receiver.chooser = receiver_chooser(rng, timeout_s=2)
    recv = await start_server(receiver.app())
    replicas = []
    for _ in range(n_replicas):
        port = free_port()
        path = work / f"replica-{port}.yaml"
        path.write_text(yaml.safe_dump(bridge_config(store.url, port, emu.url, cluster)))
        replicas.append(Replica(path, port, env))
    tally = Tally()
    try:
        for r in replicas:
            await r.start()
        await asyncio.sleep(1.5)
        stop = asyncio.Event()
        chaos = asyncio.create_task(monkey(replicas, store, kills, tally, rng, stop))
        await submitter(replicas, jobs, recv.url, env["CHAOS_KEY"], tally, rng, rate_per_s)
        stop.set()
        await chaos
        await wait_settled(tally, receiver, settle_s)
        exit_codes = [await r.terminate() for r in replicas]
    finally:
        for r in replicas:
            await r.kill()
        await recv.stop()
        await emu.stop()
        store.stop()
    report = analyse(tally, receiver)
    report["replica exit codes after SIGTERM"] = exit_codes
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=60.0, help="submissions per second")
    p.add_argument("--settle-s", type=float, default=90.0)
    p.add_argument("--cluster", action="store_true", help="a local cluster as the store")
    args = p.parse_args(argv)
    report = asyncio.run(
        run(
            args.jobs,
            args.replicas,
            args.kills,
            args.seed,
            args.rate,
            args.settle_s,
            args.cluster,
        )
    )
    width = max(len(k) for k in report)
    for k, v in report.items():
        print(f"{k:<{width}}  {v}")
    bad = report["lost"] or report["wrong events"] or report["signature failures"]
    print("CHAOS: FAILED" if bad else "CHAOS: OK")
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
