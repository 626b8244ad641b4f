"""The store's client: the connection pool, opening the configured (or an embedded)
store, and waiting for it at start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import RedisError

from bridge.config import Config
from bridge.retry import exponential_s
from bridge.store import Store
from bridge.store.cluster import StoreCluster
from bridge.store.embedded_share import EmbeddedShare
from bridge.store.replicas import ReplicaAck

STORE_CONNECTIONS = 64
WAIT_FIRST_SLEEP_S = 0.1  # wait_for_store's first sleep; doubles up to max_sleep_s
CLUSTER_RETRIES = 3  # of a plain command (a read) on a cluster, each after a new slot map


def make_redis(url: str, cluster: bool) -> Redis | StoreCluster:
    """A client whose pool waits for a free connection (up to the socket timeout) instead
    of failing with "Too many connections" when many jobs touch the store at once.

    A pooled connection the server closed (a restart) is found by the health check
    (a PING before using a connection idle for 10 s) or by the command itself, and the
    command is sent once more, at once, on a new connection. Longer outages are the
    Store's business: it retries the calls of job steps with a backoff, and answers
    every other call's error quickly (readiness, API reads).

    A cluster client learns every node from the one in `url` (so that node must answer at
    start); its script calls go through the store's own per-master pipelines
    (cluster.py), its plain commands through redis-py, which follows MOVED/ASK and reads
    the slot map again after a connection error (CLUSTER_RETRIES times)."""
    opts: dict[str, Any] = dict(
        decode_responses=True, socket_timeout=5.0, socket_connect_timeout=3.0
    )
    if cluster:
        return StoreCluster.from_url(  # type: ignore[return-value]
            url,
            max_connections=STORE_CONNECTIONS,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CLUSTER_RETRIES),
            **opts,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=STORE_CONNECTIONS,
        timeout=5.0,
        health_check_interval=10,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(StoreConnectionError,)),
        **opts,
    )
    return Redis(connection_pool=pool)


@contextlib.asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Store]:
    """The configured store; without a url, the embedded Valkey of data_dir (started by the
    first process on it, joined by the others)."""
    share = None
    url = config.store.url
    if url is None:
        share = EmbeddedShare(config.store.data_dir)
        url = (await asyncio.to_thread(share.open)).url
        _log_embedded(share)
    client = make_redis(url, config.store.cluster)
    try:
        ack = ReplicaAck(config.store.replica_ack, config.store.replica_ack_timeout_ms)
        yield Store(client, config.store.key_prefix, config.store.partitions, replica_ack=ack)
    finally:
        await client.aclose()
        if share:
            await asyncio.to_thread(share.close)


def _log_embedded(share: EmbeddedShare) -> None:
    assert share.store is not None
    log = structlog.get_logger("pushbridge")
    if share.owner:
        log.info("embedded store started", url=share.store.url, data_dir=str(share.data_dir))
    else:
        log.info(
            "joined the embedded store of another process",
            url=share.store.url,
            owner_pid=share.store.owner_pid,
            data_dir=str(share.data_dir),
        )


async def wait_for_store(store: Store, max_sleep_s: float = 5.0) -> None:
    """Start even while the store is down (a restart, a failover): retry until it answers."""
    log = structlog.get_logger("pushbridge")
    failures = 0
    while True:
        try:
            await store.ping()
            return
        except RedisError as e:
            failures += 1
            delay_s = exponential_s(failures, WAIT_FIRST_SLEEP_S, max_sleep_s)
            log.warning("store unavailable at start; retrying", error=str(e), sleep_s=delay_s)
            await asyncio.sleep(delay_s)
