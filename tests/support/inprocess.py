"""The bridge's API driven in process: httpx over ASGI, no server, no workers (role "api").
For tests that need the store but no network between the client and the bridge; the
upstream is a closed port, or, when a test asks for one, the emulator on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from redis.asyncio import Redis
from starlette.types import ASGIApp

from bridge.api.app import create_app
from bridge.api.serving import start_server
from bridge.config import parse_config, resolve_secrets
from bridge.dev.emulators.octoai import EmulatorSettings, EmulatorState, create_emulator_app
from bridge.engine.runtime import Runtime, build_runtime
from bridge.net.client import callback_client, upstream_client
from bridge.store import Store
from tests.support.config import API_KEY, ENV, base_config, loopback_only_dns

HOOK = "http://127.0.0.1:9/hook"  # never called: the API alone delivers nothing
NO_UPSTREAM = "http://127.0.0.1:9/infer"  # refuses connections: a submit is retried later


class Api:
    def __init__(self, rt: Runtime, app: ASGIApp, client: httpx.AsyncClient) -> None:
        self.rt, self.app, self.client = rt, app, client
        self.emulator: EmulatorState | None = None  # with make(emulator=...)

    def client_with(self, api_key: str | None) -> httpx.AsyncClient:
        """Another client of the same app (`async with` it): another tenant's key, or none."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(self.app), base_url="http://bridge", headers=headers
        )

    async def post_raw(self, body: bytes, **headers: str) -> httpx.Response:
        return await self.client.post(
            "/v1/jobs", content=body, headers={"content-type": "application/json", **headers}
        )

    async def submit(self, **fields: Any) -> httpx.Response:
        body = {"upstream": "echo", "inputs": {"prompt": "hi"}, "callback_url": HOOK, **fields}
        return await self.client.post("/v1/jobs", json=body)


ApiFactory = Callable[..., Any]


@contextlib.asynccontextmanager
async def api_factory(redis: Redis) -> AsyncIterator[ApiFactory]:
    """`make(upstream_url, routes, resolver, emulator, **config overrides)`: an API-only
    bridge app in process over the given store client; its upstream `echo` is at
    upstream_url, or is an emulator with the given settings on 127.0.0.1."""
    async with contextlib.AsyncExitStack() as exits:

        async def make(
            upstream_url: str = NO_UPSTREAM,
            routes: tuple[Any, ...] = (),
            resolver: Any = None,
            emulator: EmulatorSettings | None = None,
            **overrides: Any,
        ) -> Api:
            emulator_state = None
            if emulator is not None:
                emulator_app = create_emulator_app(emulator)
                server = await start_server(emulator_app, grace_s=0.5)
                exits.push_async_callback(server.stop)
                upstream_url = f"{server.url}/infer/echo"
                emulator_state = emulator_app.state.emulator
            up = await exits.enter_async_context(upstream_client())
            cb = await exits.enter_async_context(callback_client())
            config = parse_config(base_config("http://127.0.0.1:9", **overrides), ENV)
            echo = config.upstreams["echo"].model_copy(update={"url": upstream_url})
            config = config.model_copy(update={"upstreams": {"echo": echo}})
            store = Store(redis, config.store.key_prefix, config.store.partitions)
            rt = await build_runtime(
                config, resolve_secrets(config, ENV), store, up, cb, resolver or loopback_only_dns
            )
            app = create_app(rt, "api", routes)
            client = await exits.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app),
                    base_url="http://bridge",
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
            )
            api = Api(rt, app, client)
            api.emulator = emulator_state
            return api

        yield make
