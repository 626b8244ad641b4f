"""Fixtures: a real Valkey started by the suite on a free loopback port, and full stacks
(uvicorn bridge + emulator + receiver on 127.0.0.1) built from a config."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from bridge.api.serving import RunningServer, start_server
from bridge.config import Config, parse_config, resolve_secrets
from bridge.dev.emulators import PROTOCOLS as EMULATORS
from bridge.dev.emulators.octoai import EmulatorSettings, EmulatorState
from bridge.dev.receiver import Receiver
from bridge.engine.runtime import Runtime, build_runtime
from bridge.net.client import callback_client, upstream_client
from bridge.obs.logs import configure_logging
from bridge.process import bridge_app
from bridge.store import Store
from bridge.store.connection import make_redis
from bridge.store.embedded import EmbeddedValkey, free_port
from tests.upstreams.contract import FaultInjector

# `pushbridge serve` started by a test is one process (not one per CPU), so that signals
# sent to it (SIGSTOP, SIGTERM, kill -9) reach the process doing the work
os.environ["PUSHBRIDGE_WORKERS"] = "1"

API_KEY = "pb_test_key_alpha"
OTHER_KEY = "pb_test_key_beta"
SECRET = "whsec_" + base64.b64encode(b"alpha-secret-0123456789abcdefghij").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"beta-secret-0123456789abcdefghijk").decode()
UPSTREAM_TOKEN = "upstream-token-s3cr3t"
ENV = {
    "ALPHA_KEYS": API_KEY,
    "ALPHA_SECRET": SECRET,
    "BETA_KEYS": OTHER_KEY,
    "BETA_SECRET": OTHER_SECRET,
    "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
}
# an upstream's poll policy in the tests: soon, often, short
FAST_POLL = {
    "initial_delay_s": 0.05,
    "min_interval_s": 0.05,
    "max_interval_s": 0.3,
    "deadline_s": 30,
    "timeout_s": 2,
}


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("json", "info")


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    client = Redis.from_url(valkey.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis, "pbtest", partitions=8)


def base_config(emulator_url: str, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "store": {"url": "redis://unused", "key_prefix": "pbtest", "partitions": 8},
        "retention_s": 600,
        "tenants": [
            {"name": "alpha", "api_keys_env": "ALPHA_KEYS", "webhook_secret_env": "ALPHA_SECRET"},
            {"name": "beta", "api_keys_env": "BETA_KEYS", "webhook_secret_env": "BETA_SECRET"},
        ],
        "callbacks": {
            "allow_http": True,
            "allow_private_networks": True,
            "timeout_s": 2,
            "retry_schedule_s": [0.2, 0.2, 0.2],
        },
        "upstreams": {
            "echo": {
                "url": f"{emulator_url}/infer/echo",
                "health_url": f"{emulator_url}/healthz",
                "token_env": "UPSTREAM_TOKEN",
                "submit_timeout_s": 2,
                "poll": dict(FAST_POLL),
            }
        },
        "worker": {
            "lease_s": 5,
            "max_idle_s": 0.2,
            "health_interval_s": 0.2,
            "shutdown_grace_s": 2,
        },
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


async def loopback_only_dns(host: str, port: int) -> list[str]:
    """Default resolver of test stacks: no test may send a DNS query off the machine."""
    if host == "localhost":
        return ["127.0.0.1"]
    raise OSError(f"no DNS in tests: {host}")


@dataclass
class Stack:
    rt: Runtime
    config: Config
    bridge: RunningServer
    emulator: EmulatorState
    emulator_srv: RunningServer
    receiver: Receiver
    receiver_srv: RunningServer
    client: httpx.AsyncClient
    other: httpx.AsyncClient
    replicas: list[tuple[Runtime, RunningServer, httpx.AsyncClient]]
    faults: FaultInjector | None = None  # in front of the emulator, when asked for

    def hook(self, path: str = "/hook") -> str:
        return f"{self.receiver_srv.url}{path}"

    async def submit(self, client: httpx.AsyncClient | None = None, **body: Any) -> httpx.Response:
        payload = {"upstream": "echo", "inputs": {"prompt": "hi"}, "callback_url": self.hook()}
        payload.update(body)
        return await (client or self.client).post("/v1/jobs", json=payload)

    async def job(self, job_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def event(self, n: int = 1, timeout_s: float = 10) -> dict[str, Any]:
        """The n-th event the receiver accepted, once it has (fails after timeout_s)."""
        ok = await self.receiver.wait_for(lambda: len(self.receiver.succeeded()) >= n, timeout_s)
        assert ok, f"{len(self.receiver.succeeded())} of {n} events arrived"
        return self.receiver.succeeded()[n - 1].event


StackFactory = Callable[..., Any]


@pytest.fixture
async def make_stack(valkey: EmbeddedValkey, redis: Redis) -> AsyncIterator[StackFactory]:
    async with contextlib.AsyncExitStack() as exits:

        async def start_bridge(
            config: Config, store: Store, role: str, resolver: Any, port: int
        ) -> tuple[Runtime, RunningServer, httpx.AsyncClient]:
            up = await exits.enter_async_context(upstream_client())
            cb = await exits.enter_async_context(callback_client())
            cfg = config.model_copy(
                update={"listen": config.listen.model_copy(update={"port": port})}
            )
            rt = await build_runtime(
                cfg, resolve_secrets(cfg, ENV), store, up, cb, resolver or loopback_only_dns
            )
            bridge = await start_server(
                bridge_app(rt, role),  # type: ignore[arg-type]
                port,
                max_header_bytes=cfg.listen.max_header_bytes,
                header_timeout_s=cfg.listen.header_timeout_s,
            )
            exits.push_async_callback(bridge.stop)
            client = await exits.enter_async_context(
                httpx.AsyncClient(
                    base_url=bridge.url, headers={"Authorization": f"Bearer {API_KEY}"}
                )
            )
            return rt, bridge, client

        async def make(
            emulator: EmulatorSettings | None = None,
            role: str = "all",
            resolver: Any = None,
            store_url: str | None = None,
            replicas_n: int = 1,
            protocol: str = "octoai",
            upstream: Callable[[str], dict[str, Any]] | None = None,
            faults: Callable[[str, str], str | None] | None = None,
            **overrides: Any,
        ) -> Stack:
            """`protocol` picks the emulator; `upstream(emulator_url)` gives the keys of
            the "echo" upstream for it (protocol, url, ...), over the octoai defaults;
            `faults` (method, path -> step) puts a FaultInjector in front of it."""
            emu_app = EMULATORS[protocol](
                emulator or EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN, seed=1)
            )
            injector = FaultInjector(emu_app, faults) if faults else None
            emu_srv = await start_server(injector or emu_app)
            exits.push_async_callback(emu_srv.stop)
            receiver = Receiver([SECRET])
            recv_srv = await start_server(receiver.app())
            exits.push_async_callback(recv_srv.stop)
            port = free_port()
            raw = base_config(emu_srv.url, listen__port=port, **overrides)
            if upstream is not None:
                raw["upstreams"]["echo"] |= upstream(emu_srv.url)
            config = parse_config(raw, ENV)
            client_redis = redis
            if store_url:  # the production client, with its reconnects
                client_redis = make_redis(store_url, cluster=False)  # type: ignore[assignment]
                exits.push_async_callback(client_redis.aclose)
            store = Store(client_redis, config.store.key_prefix, config.store.partitions)
            replicas = [
                await start_bridge(config, store, role, resolver, port if i == 0 else free_port())
                for i in range(replicas_n)
            ]
            rt, bridge, client = replicas[0]
            other = await exits.enter_async_context(
                httpx.AsyncClient(
                    base_url=bridge.url, headers={"Authorization": f"Bearer {OTHER_KEY}"}
                )
            )
            return Stack(
                rt,
                config,
                bridge,
                emu_app.state.emulator,
                emu_srv,
                receiver,
                recv_srv,
                client,
                other,
                replicas,
                injector,
            )

        yield make
