"""Assembling a bridge process: store, HTTP clients, runtime, app; and dev mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.exceptions import RedisError
from starlette.routing import Mount

from bridge.app import Role, create_app
from bridge.config import Config, Secrets, parse_config
from bridge.embedded import EmbeddedValkey
from bridge.emulator import create_emulator_app
from bridge.leanhttp import callback_client, upstream_client
from bridge.runtime import Runtime, build_runtime
from bridge.serving import uvicorn_config
from bridge.signing import new_webhook_secret
from bridge.store import Store
from bridge.urlpolicy import Resolver

DEV_KEY_ENV = "PUSHBRIDGE_DEV_API_KEY"
DEV_SECRET_ENV = "PUSHBRIDGE_DEV_WEBHOOK_SECRET"
DEV_UPSTREAMS = ("echo", "whisper")


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


async def serve(config: Config, secrets: Secrets, role: Role) -> None:
    import uvicorn

    async with open_runtime(config, secrets) as rt:
        extra = [Mount("/emulator", create_emulator_app())] if config.dev_mode else []
        app = create_app(rt, role, extra)
        listen = config.listen
        uv = uvicorn_config(
            app,
            listen.host,
            listen.port,
            config.worker.shutdown_grace_s,
            listen.max_header_bytes,
            listen.header_timeout_s,
        )
        await uvicorn.Server(uv).serve()


def dev_credentials(data_dir: Path, environ: MutableMapping[str, str]) -> tuple[str, str]:
    """A dev API key and webhook secret, kept in data_dir so restarts keep them."""
    path = data_dir / "dev-credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        creds = {
            "api_key": "pb_dev_" + os.urandom(16).hex(),
            "webhook_secret": new_webhook_secret(),
        }
        path.write_text(json.dumps(creds))
        path.chmod(0o600)
    environ[DEV_KEY_ENV] = creds["api_key"]
    environ[DEV_SECRET_ENV] = creds["webhook_secret"]
    return creds["api_key"], creds["webhook_secret"]


def dev_config(
    environ: MutableMapping[str, str], port: int = 8080, host: str = "127.0.0.1"
) -> Config:
    """Dev mode: embedded store, the emulator's upstreams, loopback http callbacks."""
    base = f"http://127.0.0.1:{port}/emulator"
    raw = {
        "dev_mode": True,
        "listen": {"host": host, "port": port},
        "tenants": [
            {"name": "dev", "api_keys_env": DEV_KEY_ENV, "webhook_secret_env": DEV_SECRET_ENV}
        ],
        "callbacks": {"allow_http": True, "allow_private_networks": True},
        "upstreams": {
            name: {"url": f"{base}/infer/{name}", "health_url": f"{base}/healthz"}
            for name in DEV_UPSTREAMS
        },
    }
    config = parse_config(raw, environ)
    dev_credentials(Path(config.store.data_dir), environ)
    return config
