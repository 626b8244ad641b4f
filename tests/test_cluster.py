"""Redis/Valkey Cluster for real: a local cluster (3 masters, 3 replicas), a master killed
with SIGKILL mid-run, replicas acknowledging the writes a promise rests on, and
`pushbridge check` describing the cluster. (The store's scripts and one end-to-end flow
run on the cluster too: test_store.py and test_e2e.py, parametrized.)"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError
from rich.console import Console
from standardwebhooks.webhooks import Webhook

from bridge.cli.check import run_check
from bridge.store import Commit, Remove, Store
from bridge.store.cluster import shard_lines
from bridge.store.embedded import EmbeddedValkey, server_binary
from bridge.store.embedded_cluster import EmbeddedCluster, Node
from bridge.store.ratelimit import RateLimiter
from bridge.store.replicas import ReplicaAck
from bridge.store.scripts import Scripts
from tests.conftest import ENV, SECRET, base_config, cluster_client

REDIS_7_0 = "/usr/bin/redis-server"  # Debian's: WAIT, but no WAITAOF
SERVERS = [
    pytest.param(None, id="valkey"),
    pytest.param(
        REDIS_7_0,
        id="redis-7.0",
        marks=pytest.mark.skipif(not os.access(REDIS_7_0, os.X_OK), reason="no redis-server"),
    ),
]


def _master_of(cluster: EmbeddedCluster, key: str) -> Node:
    slot = key_slot(key.encode())
    with cluster.nodes[0].client() as c:
        shards = c.execute_command("CLUSTER", "SHARDS")
    for shard in shards:
        slots = shard["slots"]
        if any(a <= slot <= b for a, b in zip(slots[::2], slots[1::2], strict=True)):
            master = next(n for n in shard["nodes"] if n["role"] == "master")
            return cluster.node(f"127.0.0.1:{master['port']}")
    raise AssertionError(f"no master for slot {slot}")


def _problem_503(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "store-unavailable" and r.headers["retry-after"]


@pytest.mark.slow
async def test_a_master_killed_mid_run_loses_no_accepted_job_and_the_api_answers_503(
    make_stack, tmp_path
):
    cluster = EmbeddedCluster(
        tmp_path / "cluster",
        masters=3,
        replicas=1,
        # the replica takes over no sooner than node_timeout (+ its election delay) after
        # the kill: 3 s, longer than a submit waits (create_wait_s, 2 s), so the submits of
        # the first second after the kill see the window, however late they start under load
        node_timeout_ms=3000,
        server=os.environ.get("PB_TEST_CLUSTER_SERVER") or None,
    )
    await asyncio.to_thread(cluster.start)
    try:
        s = await make_stack(cluster=cluster)
        assert s.rt.store.create_wait_s < 3
        store: Store = s.rt.store
        statuses: Counter[int] = Counter()
        accepted: dict[str, int] = {}

        async def submit(n: int) -> None:
            r = await s.submit(metadata={"n": n})
            statuses[r.status_code] += 1
            if r.status_code == 202:
                accepted[r.json()["id"]] = n
            else:
                _problem_503(r)

        await asyncio.gather(*(submit(n) for n in range(12)))
        assert statuses == {202: 12}
        assert store.round_trips["replica-wait"] > 0  # the creations waited for replicas
        victim = _master_of(cluster, store.keys.fence(0))
        on_victim = [j for j in accepted if _master_of(cluster, store.keys.job(j)) is victim]
        cluster.kill(victim)  # kill -9, mid-run: jobs in every state on it
        reads = [await s.client.get(f"/v1/jobs/{j}") for j in on_victim[:1]]
        during = []
        for n in range(12, 52):  # one request every 0.1 s through the failover
            during.append(asyncio.create_task(submit(n)))
            await asyncio.sleep(0.1)
        await asyncio.gather(*during)
        for r in reads:  # its slots have no master yet: 503, never 500
            _problem_503(r)
        assert set(statuses) <= {202, 503}, statuses
        assert statuses[503] >= 1, statuses  # the window was seen
        assert statuses[202] > 12, statuses  # the other masters' partitions went on
        ids = {f"msg_{j[4:]}" for j in accepted}
        delivered = lambda: {d.webhook_id for d in s.receiver.succeeded()}  # noqa: E731
        assert await s.receiver.wait_for(lambda: ids <= delivered(), 30), (
            f"{len(ids - delivered())} of {len(ids)} accepted jobs never delivered"
        )
        assert store.round_trips["cluster-refresh"] >= 1  # the slot map was read again
        assert store.round_trips["cluster-script-load"] >= 4  # every master, and the new one
        for d in s.receiver.succeeded():  # each its own event, signed
            Webhook(SECRET).verify(d.body, d.headers)
            job = d.event["data"]
            assert d.webhook_id == f"msg_{job['id'][4:]}"
            assert d.event["type"] == "job.completed"
            if job["id"] in accepted:
                assert job["metadata"] == {"n": accepted[job["id"]]}
        # a cluster that cannot be reached at all: 503 everywhere, still no 500
        for node in cluster.nodes:
            cluster.kill(node)
        _problem_503(await s.submit())
        _problem_503(await s.client.get(f"/v1/jobs/{next(iter(accepted))}"))
        _problem_503(await s.client.get("/readyz"))
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.fixture(params=SERVERS)
def master_replica(request, tmp_path):
    """A single-node store with one replica (Valkey 8, Redis 7.0)."""
    server = request.param or server_binary()
    master = EmbeddedValkey(
        tmp_path / "m",
        server=server,
        appendonly=True,
        extra_args=("--repl-diskless-sync-delay", "0"),  # the replica syncs at once
    )
    master.start()
    replica = EmbeddedValkey(
        tmp_path / "r",
        server=server,
        appendonly=True,
        extra_args=("--replicaof", "127.0.0.1", str(master.port)),
    )
    replica.start()
    try:
        yield master, replica
    finally:  # kill: a SIGTERM during the replica's first AOF rewrite waits 10 s
        replica.kill()
        master.kill()


async def _replica_acknowledges(client: Redis) -> None:
    """Until the replica acknowledges writes (just after its first sync, Redis 7.0's replica
    is "online" but may not answer a WAIT for a while)."""
    for _ in range(100):
        await client.set("warm-up", 1)
        if await client.execute_command("WAIT", 1, 100) == 1:
            return
    raise AssertionError("the replica never acknowledged a write")


async def _timed_create(store: Store) -> tuple[str, float]:
    t0 = time.monotonic()
    created = await store.create_job("t1", {"status": "queued"}, 60000, "sha")
    return created.job_id, time.monotonic() - t0


@pytest.mark.serial  # a creation within 0.4 s, or not before 0.4 s
async def test_creation_waits_for_the_replica_and_a_silent_one_is_counted(master_replica):
    """The 202 of a job rests on its creation: with a replica, a creation is not answered
    before the replica has it (WAIT in the same pipeline). A replica that cannot answer
    (SIGSTOP) delays the answer by the timeout, and the miss is counted."""
    master, replica = master_replica
    client = Redis.from_url(master.url, decode_responses=True)
    reader = Redis.from_url(replica.url, decode_responses=True)
    try:
        await _replica_acknowledges(client)
        store = Store(client, "pbtest", 8, replica_ack=ReplicaAck("wait", timeout_ms=400))
        job_id, took_s = await _timed_create(store)
        assert await reader.exists(store.keys.job(job_id)), (store.round_trips, took_s)
        assert (
            store.round_trips["replica-wait"] >= 1 and not store.round_trips["replica-ack-missed"]
        )
        assert took_s < 0.4
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            _, took_s = await _timed_create(store)
            assert took_s >= 0.4 and store.round_trips["replica-ack-missed"] == 1
            off = Store(client, "pbtest", 8, replica_ack=ReplicaAck("off"))
            _, took_s = await _timed_create(off)
            assert took_s < 0.4 and not off.round_trips["replica-wait"]
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
    finally:
        await client.aclose()
        await reader.aclose()


async def test_waitaof_where_the_server_has_it_else_wait(master_replica):
    """Mode waitaof: WAITAOF on Valkey (the write is fsynced on master and replica), WAIT on
    Redis 7.0, which has no WAITAOF."""
    master, _ = master_replica
    client = Redis.from_url(master.url, decode_responses=True)
    try:
        await _replica_acknowledges(client)
        scripts = Scripts(client, ReplicaAck("waitaof", timeout_ms=3000))
        info = await client.info("server")
        command = await scripts.waits.command("standalone", client.info)
        if "valkey_version" in info:
            assert command == ("WAITAOF", 1, 1, 3000)
        else:
            assert info["redis_version"].startswith("7.0") and command == ("WAIT", 1, 3000)
        store = Store(client, "pbtest", 8, replica_ack=ReplicaAck("waitaof", timeout_ms=3000))
        store.create_wait_s = 10  # appendfsync everysec: a WAITAOF takes up to 1 s
        await _timed_create(store)
        assert store.round_trips["replica-wait"] >= 1  # twice: NOSCRIPT, then again
        assert not store.round_trips["replica-ack-missed"]
    finally:
        await client.aclose()


async def test_check_reports_the_cluster(valkey_cluster, make_stack, tmp_path, monkeypatch):
    s = await make_stack(cluster=True)
    raw = base_config(s.emulator_srv.url)
    raw["store"].update({"url": valkey_cluster.url, "cluster": True})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    console = Console(record=True, width=300)
    for name, value in ENV.items():  # the secrets check reads the process environment
        monkeypatch.setenv(name, value)
    await run_check(str(path), console)
    out = console.export_text()
    assert "ok    store cluster: state ok, 16384 of 16384 slots served" in out, out
    masters = [line for line in out.splitlines() if "store cluster: master" in line]
    assert len(masters) == 3, out
    for master, replicas in valkey_cluster.roles().items():
        (line,) = [m for m in masters if f"master {master}:" in m]
        assert line.startswith("ok") and f"replicas {replicas[0]} (" in line, line
    assert "error" not in out.replace("error store persistence", ""), out  # no AOF in tests


def test_cluster_node_ports_leave_room_for_the_bus_port(valkey_cluster):
    assert all(n.port + 10000 <= 65535 for n in valkey_cluster.nodes)
    assert all(Path(n.data_dir, "nodes.conf").exists() for n in valkey_cluster.nodes)


async def test_a_slot_without_a_master_answers_503_everywhere_then_recovers(
    make_stack, valkey_cluster
):
    """CLUSTERDOWN (a slot no master serves): create, read, cancel and redeliver of a job
    on it answer 503 store-unavailable, never 500; once the slot is served again, they
    work."""
    s = await make_stack(cluster=True)
    job_id = (await s.submit()).json()["id"]
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    slot = key_slot(s.rt.store.keys.job(job_id).encode())
    owner = _master_of(valkey_cluster, s.rt.store.keys.job(job_id))
    with owner.client() as c:
        c.execute_command("CLUSTER", "DELSLOTS", slot)
    try:
        _problem_503(await s.client.get(f"/v1/jobs/{job_id}"))
        _problem_503(await s.client.get(f"/v1/jobs/{job_id}/attempts"))
        _problem_503(await s.client.post(f"/v1/jobs/{job_id}/redeliver"))
        _problem_503(await s.client.delete(f"/v1/jobs/{job_id}"))
    finally:
        with owner.client() as c:
            c.execute_command("CLUSTER", "ADDSLOTS", slot)
        await asyncio.to_thread(valkey_cluster.wait_healthy, 10)
    assert (await s.client.get(f"/v1/jobs/{job_id}")).status_code == 200


def _move_slot(cluster: EmbeddedCluster, slot: int, source: Node, target: Node) -> None:
    """Move a slot between masters as `valkey-cli --cluster reshard` does: IMPORTING on the
    target, MIGRATING on the source, MIGRATE of its keys, then its new owner on every master."""
    with source.client() as src, target.client() as dst:
        src_id, dst_id = (
            src.execute_command("CLUSTER", "MYID"),
            dst.execute_command("CLUSTER", "MYID"),
        )
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if keys:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for address in cluster.roles():
        with cluster.node(address).client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def test_moved_and_ask_are_followed(valkey_cluster):
    """A slot moved to another master (MOVED: the slot map is patched) and a slot being
    migrated (ASK: the call goes once to the importing node, after ASKING)."""
    client = await cluster_client(valkey_cluster)
    try:
        store = Store(client, "pbtest", partitions=8)
        job_id = ""
        while store.keys.partition_of(job_id or "job_0ff") != 0:
            job_id = (await store.create_job("t1", {"status": "queued"}, 0, "sha")).job_id
        slot = key_slot(store.keys.fence(0).encode())
        source = _master_of(valkey_cluster, store.keys.fence(0))
        target = next(valkey_cluster.node(m) for m in valkey_cluster.roles() if m != source.address)
        await asyncio.to_thread(_move_slot, valkey_cluster, slot, source, target)
        claim = (await store.claim("due", 1000, 10, partitions=[0])).claims  # MOVED
        assert [c.job_id for c in claim] == [job_id] and store.round_trips["cluster-moved"]
        assert await store.commit("due", job_id, claim[0].token, Commit(fields={"x": 1}))
        assert _master_of(valkey_cluster, store.keys.job(job_id)) is target
        limiter = RateLimiter(client, "pbtest")
        key = limiter.key("u", "poll")  # a key that exists nowhere yet
        rl_slot = key_slot(key.encode())
        owner = _master_of(valkey_cluster, key)
        other = next(valkey_cluster.node(m) for m in valkey_cluster.roles() if m != owner.address)
        with owner.client() as src, other.client() as dst:
            src_id, dst_id = (
                src.execute_command("CLUSTER", "MYID"),
                dst.execute_command("CLUSTER", "MYID"),
            )
            dst.execute_command("CLUSTER", "SETSLOT", rl_slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", rl_slot, "MIGRATING", dst_id)
        try:
            assert await limiter.acquire("u", "poll", 1000.0) == 0.0  # ASK
            assert limiter._scripts.tally["cluster-ask"] == 1
            with other.client() as dst:
                dst.execute_command("ASKING")
                assert dst.exists(key)  # created on the importing node
        finally:
            await asyncio.to_thread(_move_slot, valkey_cluster, rl_slot, owner, other)
        await asyncio.to_thread(valkey_cluster.wait_healthy, 10)
    finally:
        await client.aclose()


def test_check_calls_a_slot_range_without_a_master_an_error_and_one_without_replica_a_warning():
    master = {"ip": "127.0.0.1", "port": 7000, "role": "master", "health": "online"}
    replica = {"ip": "127.0.0.1", "port": 7003, "role": "replica", "health": "online"}
    ok = shard_lines({"slots": [0, 5460], "nodes": [master, replica]})
    assert ok == [
        ("ok", "master 127.0.0.1:7000: slots 0-5460 (5461), replicas 127.0.0.1:7003 (online)")
    ]
    (kind, text) = shard_lines({"slots": [0, 5460], "nodes": [master]})[0]
    assert kind == "warn" and "without a replica" in text
    failed = {**master, "health": "fail"}
    assert shard_lines({"slots": [0, 10, 20, 30], "nodes": [failed, replica]}) == [
        ("error", "slots 0-10, 20-30 (22): no master online")
    ]


async def test_reads_over_every_partition_work_on_the_cluster(valkey_cluster):
    """The calls that are not job scripts: layout, url key, backlog (a script per
    partition), learned durations (a read per partition) and a job with its result."""
    client = await cluster_client(valkey_cluster)
    try:
        store = Store(client, "pbtest", partitions=8)
        await store.ensure_layout()
        assert len(await store.url_key()) == 32
        created = [
            await store.create_job("t1", {"status": "queued", "tenant": "t1"}, 0, "sha")
            for _ in range(8)
        ]
        claims = (await store.claim("due", 1000, 100)).claims
        assert {c.job_id for c in claims} == {c.job_id for c in created}
        for i, c in enumerate(claims):
            done = Commit(
                fields={"status": "completed"},
                source=Remove(),
                completed=True,
                result=f'{{"n": {i}}}',
                target_delay_ms=60_000,
                counters={"u:s0-1": 1},
            )
            assert await store.commit("due", c.job_id, c.token, done)
        assert await store.duration_counts() == {"u:s0-1": 8}
        backlog = await store.backlog(60_000)
        assert backlog.deliveries_scheduled == 8 and backlog.due_now == 0
        job, result = await store.get_job_and_result(claims[0].job_id)
        assert job is not None and job.status == "completed" and result == '{"n": 0}'
    finally:
        await client.aclose()


async def test_a_script_error_reaches_its_caller_on_the_cluster(valkey_cluster):
    client = await cluster_client(valkey_cluster)
    try:
        store = Store(client, "pbtest", partitions=8)
        with pytest.raises(RedisClusterException):  # no keys: no slot to send it to
            await asyncio.wait_for(store._auto.call(store._commit, [], []), 5)
        job = store.keys.job("job_000" + "0" * 24)
        with pytest.raises(ResponseError):  # commit.lua needs all its keys
            await asyncio.wait_for(store._auto.call(store._commit, [job], []), 5)
    finally:
        await client.aclose()
