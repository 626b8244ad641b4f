"""Assembling a bridge process: store, HTTP clients, runtime, engine and app."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from bridge.api.app import create_app
from bridge.api.serving import uvicorn_config
from bridge.config import Config, Secrets
from bridge.delivery.urlpolicy import Resolver
from bridge.engine.runtime import Runtime, build_runtime
from bridge.engine.service import Engine, Role
from bridge.net.client import callback_client, upstream_client
from bridge.store.connection import open_store, wait_for_store


@contextlib.asynccontextmanager
async def open_runtime(
    config: Config, secrets: Secrets, resolver: Resolver | None = None
) -> AsyncIterator[Runtime]:
    async with open_store(config) as store, upstream_client() as up, callback_client() as cb:
        await wait_for_store(store)
        await store.ensure_layout()
        yield await build_runtime(config, secrets, store, up, cb, resolver)


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
    config: Config,
    secrets: Secrets,
    role: Role,
    extra_routes: Sequence[BaseRoute] = (),
    sock: socket.socket | None = None,
) -> None:
    """Run a bridge process until SIGTERM; on `sock` when given (a socket shared by the
    workers of `serve --workers N`), else bound to listen.host:listen.port."""
    import uvicorn

    async with open_runtime(config, secrets) as rt:
        app = bridge_app(rt, role, extra_routes)
        listen = config.listen
        uv = uvicorn_config(
            app,
            listen.host,
            listen.port,
            config.worker.shutdown_grace_s,
            listen.max_header_bytes,
            listen.header_timeout_s,
        )
        await uvicorn.Server(uv).serve(sockets=[sock] if sock else None)
