"""The ASGI app: API routes, error handling and the workers' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.api import ROUTES
from bridge.logs import log_loop_exception
from bridge.openapi import openapi_spec
from bridge.problems import Problem
from bridge.runtime import Runtime, check_health, every, learn_durations, measure_backlog
from bridge.worker import Workers

Role = Literal["all", "api", "worker"]


class ClearContext:
    """Fresh structlog context per request, so job ids never leak between requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        structlog.contextvars.clear_contextvars()
        await self.app(scope, receive, send)


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "invalid-request")
    return Problem(exc.status_code, code, str(exc.detail), headers=exc.headers).response()


async def _store_down(request: Request, exc: Exception) -> Response:
    request.app.state.runtime.log.warning("store unavailable", error=str(exc))
    return Problem(
        503,
        "store-unavailable",
        "the store cannot be reached; nothing was accepted",
        headers={"Retry-After": "1"},
    ).response()


async def _metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _openapi(request: Request) -> Response:
    return Response(orjson.dumps(request.app.state.openapi), media_type="application/json")


def create_app(
    rt: Runtime, role: Role = "all", extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    workers = Workers(rt) if role in ("all", "worker") else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        w = rt.config.worker
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(log_loop_exception)
        # the first health check waits a moment, so that an upstream served by this very
        # process (the dev-mode emulator) is listening by then
        background = [
            asyncio.create_task(
                every(
                    "health",
                    w.health_interval_s,
                    lambda: check_health(rt),
                    stop,
                    first_delay_s=min(0.5, w.health_interval_s),
                )
            ),
            asyncio.create_task(
                every("backlog", w.health_interval_s, lambda: measure_backlog(rt), stop)
            ),
        ]
        if workers:
            workers.start()
            background.append(
                asyncio.create_task(every("durations", 10.0, lambda: learn_durations(rt), stop))
            )
        rt.log.info("bridge started", role=role, upstreams=sorted(rt.upstreams))
        try:
            yield
        finally:
            stop.set()
            if workers:
                await workers.stop(rt.config.worker.shutdown_grace_s)
            await asyncio.gather(*background)
            rt.log.info("bridge stopped", role=role)
            loop.set_exception_handler(previous_handler)

    routes = [*ROUTES, Route("/metrics", _metrics), Route("/openapi.json", _openapi), *extra_routes]
    if role == "worker":
        routes = [
            r for r in routes if getattr(r, "path", "") in ("/healthz", "/readyz", "/metrics")
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ClearContext)],
        exception_handlers={Problem: _problem, HTTPException: _http_error, RedisError: _store_down},
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.openapi = openapi_spec()
    app.state.workers = workers
    return app
