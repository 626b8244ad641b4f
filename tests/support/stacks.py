"""Full stacks on 127.0.0.1: the bridge (its runtime, workers and uvicorn), the upstream
emulator and a webhook receiver, each a real server, built from a config."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from bridge.api.serving import RunningServer, start_server
from bridge.config import Config, parse_config, resolve_secrets
from bridge.dev.emulators import PROTOCOLS as EMULATORS
from bridge.dev.emulators.octoai import EmulatorSettings, EmulatorState
from bridge.dev.receiver import Receiver
from bridge.engine.runtime import Runtime, build_runtime
from bridge.engine.service import Role
from bridge.net.client import callback_client, upstream_client
from bridge.process import bridge_app
from bridge.store import Store
from bridge.store.connection import make_redis
from bridge.store.embedded import free_port
from tests.support.config import (
    API_KEY,
    ENV,
    OTHER_KEY,
    SECRET,
    UPSTREAM_TOKEN,
    base_config,
    loopback_only_dns,
)
from tests.upstreams.contract import FaultInjector


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

    async def event(self, n: int = 1, timeout_s: float = 10) -> dict[str, Any]:
        """The n-th event the receiver accepted, once it has (fails after timeout_s)."""
        ok = await self.receiver.wait_for(lambda: len(self.receiver.succeeded()) >= n, timeout_s)
        assert ok, f"{len(self.receiver.succeeded())} of {n} events arrived"
        return self.receiver.succeeded()[n - 1].event

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


StackFactory = Callable[..., Any]
Env = dict[str, str]
# the emulator and the receiver stop after the bridges: what they still serve then (a
# reply planned to hang, a killed replica's request) is nobody's any more
HELPER_GRACE_S = 0.5


async def stop_all(*servers: RunningServer) -> None:
    """Stop servers together: each takes uvicorn's shutdown ticks (0.1-0.2 s)."""
    await asyncio.gather(*(server.stop() for server in servers))


@contextlib.asynccontextmanager
async def stack_factory(
    redis: Redis, cluster_store: Callable[[Any], Awaitable[Any]] | None = None
) -> AsyncIterator[StackFactory]:
    """`make(emulator, role, resolver, store_url, replicas_n, **config overrides)`: a Stack.

    At the end each bridge stops first (its workers finish within the grace period, still
    reaching the emulator and receiver, over clients still open), then the emulator and
    the receiver, together."""
    async with contextlib.AsyncExitStack() as exits:

        async def start_bridge(
            config: Config, store: Store, role: Role, resolver: Any, port: int, env: Env
        ) -> tuple[Runtime, RunningServer, httpx.AsyncClient]:
            up = await exits.enter_async_context(upstream_client())
            cb = await exits.enter_async_context(callback_client())
            cfg = config.model_copy(
                update={"listen": config.listen.model_copy(update={"port": port})}
            )
            rt = await build_runtime(
                cfg, resolve_secrets(cfg, env), store, up, cb, resolver or loopback_only_dns
            )
            bridge = await start_server(
                bridge_app(rt, role),
                port,
                max_header_bytes=cfg.listen.max_header_bytes,
                header_timeout_s=cfg.listen.header_timeout_s,
                on_drain=rt.waiters.close,
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
            role: Role = "all",
            resolver: Any = None,
            store_url: str | None = None,
            cluster: Any = False,
            replicas_n: int = 1,
            roles: list[Role] | None = None,  # one per replica (else `role` for each)
            protocol: str = "octoai",
            upstream: Callable[[str], dict[str, Any]] | None = None,
            public_url_self: bool = False,
            env: Callable[[str], Awaitable[Env]] | None = None,
            faults: Callable[[str, str], str | None] | None = None,
            **overrides: Any,
        ) -> Stack:
            """`protocol` picks the emulator; `upstream(emulator_url)` gives the keys of
            the "echo" upstream for it (protocol, url, ...), over the octoai defaults.
            `public_url_self`: listen.public_url is the first bridge's own loopback URL (so
            providers' pushes reach it). `env(emulator_url)`: more environment for the
            secrets (e.g. a push secret read from the emulator), over the suite's."""
            emu_app = EMULATORS[protocol](
                emulator or EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN, seed=1)
            )
            # `faults` (method, path -> step) puts a FaultInjector in front of the emulator
            injector = FaultInjector(emu_app, faults) if faults else None
            emu_srv = await start_server(injector or emu_app, grace_s=HELPER_GRACE_S)
            receiver = Receiver([SECRET])
            try:
                recv_srv = await start_server(receiver.app(), grace_s=HELPER_GRACE_S)
            except BaseException:
                await emu_srv.stop()
                raise
            exits.push_async_callback(stop_all, emu_srv, recv_srv)
            port = free_port()
            if public_url_self:
                overrides["listen__public_url"] = f"http://127.0.0.1:{port}"
            raw = base_config(emu_srv.url, listen__port=port, **overrides)
            if upstream is not None:
                raw["upstreams"]["echo"] |= upstream(emu_srv.url)
            environ = {**ENV, **(await env(emu_srv.url) if env else {})}
            config = parse_config(raw, environ)
            client_redis: Any = redis
            if cluster:  # a real cluster: the given one, or (True) the session's, emptied
                assert cluster_store is not None, "no cluster here"
                client_redis = await cluster_store(cluster)
                exits.push_async_callback(client_redis.aclose)
            elif store_url:  # the production client, with its reconnects
                client_redis = make_redis(store_url, cluster=False)
                exits.push_async_callback(client_redis.aclose)
            store = Store(client_redis, config.store.key_prefix, config.store.partitions)
            replicas = [
                await start_bridge(
                    config, store, r, resolver, port if i == 0 else free_port(), environ
                )
                for i, r in enumerate(roles or [role] * replicas_n)
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
