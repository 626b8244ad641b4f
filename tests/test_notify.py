"""Job notices over pub/sub against a real Valkey (and a real 3-node Valkey Cluster): what
the scripts publish, poke.lua's rules, and a subscriber that survives its connection."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from bridge.model import JobStatus
from bridge.store import After, Commit, Remove, Store
from bridge.store.connection import make_redis
from bridge.store.embedded import free_port, server_binary
from bridge.store.keys import Keys, new_job_id
from bridge.store.notify import Notice, Subscriber, parse_notice


async def _create(store: Store, lease_ms: int = 60_000, upstream: str = "echo") -> tuple[str, str]:
    fields = {
        "tenant": "t",
        "upstream": upstream,
        "status": "queued",
        "callback_url": "",
        "inputs": "{}",
        "metadata": "null",
        "deadline_ms": 60_000,
    }
    created = await store.create_job("t", fields, lease_ms, "sha")
    return created.job_id, created.token


class Listener:
    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.subscribed = 0
        self.changed = asyncio.Event()

    def on_notice(self, notice: Notice) -> None:
        self.notices.append(notice)
        self.changed.set()

    def on_subscribed(self) -> None:
        self.subscribed += 1
        self.changed.set()

    async def until(self, predicate, timeout_s: float = 5.0) -> bool:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        return True


@contextlib.asynccontextmanager
async def subscribed(redis: Redis | RedisCluster, keys: Keys) -> AsyncIterator[Listener]:
    listener = Listener()
    sub = Subscriber(redis, keys, listener.on_notice, listener.on_subscribed)
    task = asyncio.create_task(sub.run())
    try:
        await listener.until(lambda: listener.subscribed >= 1)
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_parse_notice_refuses_anything_else():
    job = "job_00a" + "0" * 24
    assert parse_notice(f"done {job}") == Notice("done", job)
    assert parse_notice(f"push {job} due my upstream") == Notice("push", job, "due", "my upstream")
    for junk in ("", "done", "done job_1", f"push {job} later x", f"push {job}", b"\xff", 7, None):
        assert parse_notice(junk) is None


async def test_terminal_commits_and_cancels_publish_done(store: Store, redis: Redis):
    async with subscribed(redis, store.keys) as listener:
        job_id, token = await _create(store, lease_ms=0)
        # a commit that is not terminal publishes nothing
        running = Commit(fields={"status": JobStatus.RUNNING}, source=After(60_000))
        assert await store.commit("due", job_id, token, running)
        done = Commit(fields={"status": JobStatus.COMPLETED}, source=Remove(), completed=True)
        assert await store.commit("due", job_id, token, done)
        other_id, _ = await _create(store)
        assert await store.cancel(other_id, "t", 60_000) == "ok"
        await listener.until(lambda: len(listener.notices) >= 2)
        assert listener.notices == [Notice("done", job_id), Notice("done", other_id)]
        # a commit fenced out publishes nothing either
        third_id, stale = await _create(store, lease_ms=0)
        await store.claim("due", 60_000, 100)
        assert not await store.commit("due", third_id, stale, done)
        await asyncio.sleep(0.2)
        assert len(listener.notices) == 2


async def test_poke_rescores_a_free_running_job_and_leaves_a_held_one(store: Store, redis: Redis):
    job_id, token = await _create(store, lease_ms=0)
    due = store.keys.schedule("due", store.keys.partition_of(job_id))
    async with subscribed(redis, store.keys) as listener:
        # queued (its submit under way): told, never made due (it would be submitted twice)
        assert await store.poke(job_id) == "queued"
        # running and scheduled in a minute, no claim holds it: due now
        c = Commit(fields={"status": JobStatus.RUNNING}, source=After(60_000))
        assert await store.commit("due", job_id, token, c)
        before = await redis.zscore(due, job_id)
        assert await store.poke(job_id) == "running"
        assert await redis.zscore(due, job_id) < before - 50_000
        # claimed: its lease is noted, and a push leaves the score to the holder
        batch = await store.claim("due", 60_000, 10)
        assert [cl.job_id for cl in batch.claims] == [job_id]
        claimed_score = await redis.zscore(due, job_id)
        assert await store.poke(job_id) == "running"
        assert await redis.zscore(due, job_id) == claimed_score
        # held between polls (After with held): still the holder's
        token = batch.claims[0].token
        held = Commit(source=After(30_000), held=True)
        assert await store.commit("due", job_id, token, held)
        held_score = await redis.zscore(due, job_id)
        await store.poke(job_id)
        assert await redis.zscore(due, job_id) == held_score
        # given back to the schedule (not held): a push makes it due again
        assert await store.commit("due", job_id, token, Commit(source=After(30_000)))
        await store.poke(job_id)
        assert await redis.zscore(due, job_id) < held_score - 25_000
        await listener.until(lambda: len(listener.notices) >= 5)
        hows = [n.how for n in listener.notices]
        assert hows == ["queued", "due", "held", "held", "due"]
        assert {n.upstream for n in listener.notices} == {"echo"}
        assert (await store.get_job(job_id)).pushed_at is not None


async def test_poke_of_a_finished_or_missing_job_changes_nothing(store: Store, redis: Redis):
    job_id, token = await _create(store, lease_ms=0)
    done = Commit(fields={"status": JobStatus.COMPLETED}, source=Remove(), completed=True)
    assert await store.commit("due", job_id, token, done)
    async with subscribed(redis, store.keys) as listener:
        assert await store.poke(job_id) == "completed"
        assert await store.poke("job_001" + "0" * 24) == "missing"
        await asyncio.sleep(0.2)
        assert listener.notices == []
    assert (await store.get_job(job_id)).pushed_at is None
    assert not await redis.exists(store.keys.job("job_001" + "0" * 24))


@pytest.mark.parametrize("production_client", [False, True])
async def test_subscriber_subscribes_again_after_losing_its_connection(
    store: Store, redis: Redis, valkey, production_client: bool
):
    # the production client reconnects (and subscribes again) by itself; a plain one raises
    client = make_redis(valkey.url, cluster=False) if production_client else redis
    async with subscribed(client, store.keys) as listener:
        killed = await redis.client_kill_filter(_type="pubsub")
        assert killed >= 1
        await listener.until(lambda: listener.subscribed >= 2)
        job_id, _ = await _create(store)
        assert await store.cancel(job_id, "t", 60_000) == "ok"
        await listener.until(lambda: Notice("done", job_id) in listener.notices)
    if production_client:
        await client.aclose()


# --- Redis Cluster: SPUBLISH from the scripts, SSUBSCRIBE by partition -------------------


def _cluster_node(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)]
    args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    args += ["--cluster-port", str(free_port())]  # not port + 10000, which may be taken
    args += ["--save", "", "--appendonly", "no", "--logfile", str(data_dir / "log")]
    return subprocess.Popen(args)


def _wait_ready(port: int, timeout_s: float = 10.0) -> None:
    client = SyncRedis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three masters on loopback, slots assigned with valkey-cli."""
    base = tmp_path_factory.mktemp("cluster")
    ports = [free_port() for _ in range(3)]
    procs = [_cluster_node(base / str(p), p) for p in ports]
    try:
        for p in ports:  # each node answers before the cluster is made
            _wait_ready(p)
        cli = str(Path(server_binary()).with_name("valkey-cli"))
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def test_cluster_notices_reach_one_subscriber_from_every_partition(cluster: str):
    client = RedisCluster.from_url(cluster, decode_responses=True)
    try:
        async with asyncio.timeout(20):
            while (await client.cluster_info())["cluster_state"] != "ok":
                await asyncio.sleep(0.1)
        store = Store(client, "pbcluster", partitions=8)
        assert store.publish == "SPUBLISH"
        nodes = {client.get_node_from_key(store.keys.events(p)).name for p in range(8)}
        assert len(nodes) > 1  # the partitions' channels live on several nodes
        async with subscribed(client, store.keys) as listener:
            # (jobs written directly: creating them pipelines scripts, which the cluster
            # client refuses today; issue 13) a push and a cancel in every partition
            jobs = [new_job_id(p) for p in range(8)]
            for job_id in jobs:
                fields = {"tenant": "t", "status": "running", "upstream": "echo"}
                await client.hset(store.keys.job(job_id), mapping=fields)
                assert await store.poke(job_id) == "running"
                assert await store.cancel(job_id, "t", 60_000) == "ok"
            await listener.until(lambda: len(listener.notices) == 16, 10.0)
            pushed = [n.job_id for n in listener.notices if n.kind == "push"]
            done = [n.job_id for n in listener.notices if n.kind == "done"]
            assert sorted(pushed) == sorted(done) == sorted(jobs)
    finally:
        await client.aclose()
