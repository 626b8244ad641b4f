"""Replicas as real processes over one store: SIGSTOP past the lease (fencing), SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from bridge.dev.receiver import Reply
from bridge.engine.loops import Workers
from bridge.store.embedded import free_port
from bridge.store.embedded_cluster import EmbeddedCluster
from tests.support.config import API_KEY, ENV
from tests.support.waiting import eventually, until


@contextlib.asynccontextmanager
async def replica(stack, valkey, tmp_path: Path, workers: int = 1, **worker) -> AsyncIterator[dict]:
    """A `pushbridge serve` process sharing the stack's store (`valkey`: a single node or a
    cluster), emulator and receiver."""
    raw = stack.config.model_dump(mode="json")
    port = free_port()
    raw["listen"]["port"] = port
    raw["store"]["url"] = valkey.url
    raw["store"]["cluster"] = isinstance(valkey, EmbeddedCluster)
    raw["worker"].update(worker)
    path = tmp_path / f"replica-{port}.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--workers",
        str(workers),
        "--config",
        str(path),
        env={**os.environ, **ENV},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=open(tmp_path / f"replica-{port}.log", "wb"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
    try:
        yield {"proc": proc, "url": url}
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            await proc.wait()


async def _metric(url: str, name: str) -> float:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{url}/metrics")).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _wait_arrivals(receiver, path: str, n: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(1 for p, _ in receiver.arrivals if p == path) < n:
        assert time.monotonic() < deadline, "delivery never arrived"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("store", ["single", "cluster"])
async def test_frozen_replica_cannot_overwrite_newer_state(
    make_stack, valkey, tmp_path, store, request
):
    if store == "cluster":  # the replica process is a cluster client too
        valkey = request.getfixturevalue("valkey_cluster")
    s = await make_stack(
        role="api", worker__lease_s=1.5, callbacks__timeout_s=10, cluster=store == "cluster"
    )
    s.receiver.plan("/fence", Reply(200, delay_s=3))  # the frozen replica's attempt hangs
    async with replica(s, valkey, tmp_path, lease_s=1.5) as a:
        job_id = (await s.submit(callback_url=s.hook("/fence"))).json()["id"]
        await _wait_arrivals(s.receiver, "/fence", 1)
        a["proc"].send_signal(signal.SIGSTOP)  # frozen while holding the delivery lease
        workers = Workers(s.rt)  # replica B takes over once the lease has run out
        workers.start()
        try:
            assert await s.receiver.wait_for(lambda: len(s.receiver.to("/fence")) >= 1, 10)
            await asyncio.sleep(0.3)
            after_b = await s.job(job_id)
            assert after_b["delivery"] == {
                **after_b["delivery"],
                "state": "delivered",
                "attempts": 1,
            }
            a["proc"].send_signal(signal.SIGCONT)  # A wakes up with a stale token
            lost_name = 'pushbridge_lost_leases_total{schedule="deliver"}'

            async def a_tried_to_commit() -> bool:
                return await _metric(a["url"], lost_name) > 0

            assert await eventually(a_tried_to_commit, 6)  # its hanging attempt ended
            await asyncio.sleep(0.3)
            final = await s.job(job_id)
            assert final["delivery"] == after_b["delivery"]  # A's commit was refused
            attempts = (await s.client.get(f"/v1/jobs/{job_id}/attempts")).json()["attempts"]
            assert len(attempts) == 1
            lost = await _metric(a["url"], lost_name)
            assert lost == 1
            # at least once: both saw the same event, never a different one
            ids = {d.webhook_id for d in s.receiver.deliveries}
            assert ids == {"msg_" + job_id[4:]}
            assert len({d.event["type"] for d in s.receiver.deliveries}) == 1
        finally:
            await workers.stop(1)


async def test_sigterm_finishes_in_flight_work_and_exits_0(make_stack, valkey, tmp_path):
    s = await make_stack(role="api", callbacks__timeout_s=10)
    s.receiver.plan("/drain", Reply(200, delay_s=1))
    async with replica(s, valkey, tmp_path, lease_s=60, shutdown_grace_s=5) as a:
        job_id = (await s.submit(callback_url=s.hook("/drain"))).json()["id"]
        await _wait_arrivals(s.receiver, "/drain", 1)
        a["proc"].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(a["proc"].wait(), 10) == 0
    job = await s.job(job_id)
    assert job["delivery"]["state"] == "delivered"  # finished and committed before exiting


async def test_sigterm_releases_leases_so_nothing_waits_for_expiry(make_stack, valkey, tmp_path):
    s = await make_stack(role="api", callbacks__timeout_s=20)
    s.receiver.plan("/stuck", Reply(200, delay_s=15))
    async with replica(s, valkey, tmp_path, lease_s=60, shutdown_grace_s=0.5) as a:
        job_id = (await s.submit(callback_url=s.hook("/stuck"))).json()["id"]
        await _wait_arrivals(s.receiver, "/stuck", 1)
        t0 = time.monotonic()
        a["proc"].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(a["proc"].wait(), 10) == 0
        assert time.monotonic() - t0 < 5
    workers = Workers(s.rt)
    workers.start()
    try:
        # released at shutdown: another replica delivers at once, not after the 60 s lease
        assert await s.receiver.wait_for(lambda: len(s.receiver.to("/stuck")) >= 1, 5)
        await asyncio.sleep(0.2)
        assert (await s.job(job_id))["delivery"]["state"] == "delivered"
    finally:
        await workers.stop(1)


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found |= {int(c) for c in children}
    return found


async def test_workers_share_the_port_and_the_store_and_are_restarted(make_stack, valkey, tmp_path):
    """`serve --workers 2`: two processes answer on one port and work one store; a worker
    killed -9 is replaced; SIGTERM stops them all gracefully (exit 0)."""
    s = await make_stack(role="api")  # this process only accepts; the replica's workers work
    async with replica(s, valkey, tmp_path, workers=2, lease_s=2) as a:
        parent = a["proc"].pid
        for _ in range(100):
            if len(_children(parent)) == 2:
                break
            await asyncio.sleep(0.05)
        first = _children(parent)
        assert len(first) == 2
        async with httpx.AsyncClient(
            base_url=a["url"], headers={"Authorization": f"Bearer {API_KEY}"}
        ) as c:
            body = {"upstream": "echo", "inputs": {}, "callback_url": s.hook("/w")}
            replies = [await c.post("/v1/jobs", json=body) for _ in range(10)]
            assert all(r.status_code == 202 for r in replies)
            assert await s.receiver.wait_for(lambda: len(s.receiver.to("/w")) >= 10, 15)
            os.kill(min(first), signal.SIGKILL)
            for _ in range(100):
                now = _children(parent)
                if len(now) == 2 and now != first:
                    break
                await asyncio.sleep(0.1)
            assert len(now) == 2 and min(first) not in now  # replaced
            more = [await c.post("/v1/jobs", json=body) for _ in range(10)]
            assert all(r.status_code == 202 for r in more)
            assert await s.receiver.wait_for(lambda: len(s.receiver.to("/w")) >= 20, 15)
        a["proc"].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(a["proc"].wait(), 15) == 0
        for pid in now:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )


async def test_a_cancel_through_another_replica_stops_the_holders_polls(make_stack):
    # replica 0 submitted the job and holds it between polls; its polls that change nothing
    # are committed only now and then (LAZY_COMMIT_S), so a fenced commit would tell it of
    # the cancel late: the cancel's notice makes it forget the job at once
    s = await make_stack(replicas_n=2)
    job = (await s.submit(inputs={"_emulate": {"duration_s": 30}})).json()
    holder, (_, _, other) = s.replicas[0][0], s.replicas[1]
    future = s.emulator.futures[job["upstream_id"]]
    assert await until(lambda: future.polls >= 3, 5)  # held here, polled every 0.3 s
    assert [j.id for j in holder.workers.held_jobs()] == [job["id"]]
    r = await other.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    await asyncio.sleep(0.5)  # the notice reaches replica 0 (a poll may be under way)
    polls = future.polls
    await asyncio.sleep(1.5)  # five poll intervals
    assert future.polls <= polls + 1
    assert holder.workers.held_jobs() == []
