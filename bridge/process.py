"""Assembling a bridge process: store, HTTP clients, runtime, app; and dev mode."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from bridge.api.app import create_app
from bridge.api.serving import uvicorn_config
from bridge.config import Config, Secrets
from bridge.delivery.urlpolicy import Resolver
from bridge.embedded_share import EmbeddedShare
from bridge.engine.runtime import Runtime, build_runtime
from bridge.engine.service import Engine, Role
from bridge.net.client import callback_client, upstream_client
from bridge.store import Store

STORE_CONNECTIONS = 64


def make_redis(url: str, cluster: bool) -> Redis | RedisCluster:
    """A client whose pool waits for a free connection (up to the socket timeout) instead
    of failing with "Too many connections" when many jobs touch the store at once."""
    opts: dict[str, Any] = dict(
        decode_responses=True, socket_timeout=5.0, socket_connect_timeout=3.0
    )
    if cluster:
        return RedisCluster.from_url(url, max_connections=STORE_CONNECTIONS, **opts)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=STORE_CONNECTIONS, timeout=5.0, health_check_interval=10, **opts
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
        yield Store(client, config.store.key_prefix, config.store.partitions)
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


@contextlib.asynccontextmanager
async def open_runtime(
    config: Config, secrets: Secrets, resolver: Resolver | None = None
) -> AsyncIterator[Runtime]:
    async with open_store(config) as store, upstream_client() as up, callback_client() as cb:
        await wait_for_store(store)
        yield await build_runtime(config, secrets, store, up, cb, resolver)


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


def bridge_app(
    rt: Runtime, role: Role = "all", extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """A bridge process's app: the HTTP side of `role`, with the engine started when the
    server starts and stopped (leases given back) when it shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Engine(rt, role).running():
            yield

    return create_app(rt, role, extra_routes, lifespan)


async def serve(
    config: Config, secrets: Secrets, role: Role, extra_routes: Sequence[BaseRoute] = ()
) -> None:
    import uvicorn

    async with open_runtime(config, secrets) as rt:
        app = bridge_app(rt, role, extra_routes)
        uv = uvicorn_config(
            app, config.listen.host, config.listen.port, config.worker.shutdown_grace_s
        )
        await uvicorn.Server(uv).serve()
