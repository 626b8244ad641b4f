"""The store's client: the connection pool, opening the configured (or an embedded)
store, and waiting for it at start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import RedisError

from bridge.config import Config
from bridge.store import Store
from bridge.store.embedded import EmbeddedValkey

STORE_CONNECTIONS = 64


def make_redis(url: str, cluster: bool) -> Redis | RedisCluster:
    """A client whose pool waits for a free connection (up to the socket timeout) instead
    of failing with "Too many connections" when many jobs touch the store at once.

    A pooled connection the server closed (a restart) is found by the health check
    (a PING before using a connection idle for 10 s) or by the command itself, and the
    command is sent once more, at once, on a new connection. Longer outages are the
    Store's business: it retries the calls of job steps with a backoff, and answers
    every other call's error quickly (readiness, API reads)."""
    opts: dict[str, Any] = dict(
        decode_responses=True, socket_timeout=5.0, socket_connect_timeout=3.0
    )
    if cluster:
        return RedisCluster.from_url(url, max_connections=STORE_CONNECTIONS, **opts)
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
    """The configured store; an embedded Valkey in data_dir when no url is set."""
    embedded = None
    url = config.store.url
    if url is None:
        embedded = EmbeddedValkey(Path(config.store.data_dir) / "valkey")
        await embedded.astart()
        url = embedded.url
        structlog.get_logger("pushbridge").info(
            "embedded store started", url=url, data_dir=str(embedded.data_dir)
        )
    client = make_redis(url, config.store.cluster)
    try:
        yield Store(client, config.store.key_prefix, config.store.partitions)
    finally:
        await client.aclose()
        if embedded:
            await embedded.astop()


async def wait_for_store(store: Store, max_sleep_s: float = 5.0) -> None:
    """Start even while the store is down (a restart, a failover): retry until it answers."""
    log = structlog.get_logger("pushbridge")
    delay_s = 0.1
    while True:
        try:
            await store.ping()
            return
        except RedisError as e:
            log.warning("store unavailable at start; retrying", error=str(e), sleep_s=delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(max_sleep_s, delay_s * 2)
