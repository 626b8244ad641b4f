"""The ASGI app: API and operations routes, error handling."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisClusterException, RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.api.console import console_routes
from bridge.api.joblist import COLLECTION_ROUTE
from bridge.api.jobs import JOB_ROUTES, OPS_ROUTES
from bridge.api.openapi import openapi_spec
from bridge.api.problems import Problem, problem_page
from bridge.api.push import PUSH_ROUTES
from bridge.api.requestbody import MemoryBudget
from bridge.engine.runtime import Runtime
from bridge.engine.service import Role

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


class ClearContext:
    """Fresh structlog context per request, so job ids never leak between requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        structlog.contextvars.clear_contextvars()
        await self.app(scope, receive, send)


class CatchAll:
    """The last word on errors a handler did not answer: a client gone mid-request is one
    info line; anything else is one structured error line (with its traceback) and a
    problem+json 500 that says nothing about it. Nothing reaches uvicorn's "Exception in
    ASGI application" logging."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        log = structlog.get_logger("pushbridge")
        try:
            await self.app(scope, receive, send_noting_start)
        except ClientDisconnect:
            log.info("client disconnected mid-request", path=scope["path"])
        except Exception as e:  # a bug: log it, answer a clean 500
            log.error(
                "unhandled error",
                path=scope["path"],
                error_type=type(e).__name__,
                error=str(e)[:300],
                traceback="".join(traceback.format_exception(e))[-8000:],
            )
            if not started:
                problem = Problem(500, "internal-error", "unexpected error; it has been logged")
                await problem.response()(scope, receive, send)


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
    """This process's metrics. Under `serve --workers N` each scrape is answered by one of
    the N processes; X-Pushbridge-Pid says which (bench/run.py adds them up)."""
    rt: Runtime = request.app.state.runtime
    return Response(
        generate_latest(rt.metrics.registry),
        media_type=CONTENT_TYPE_LATEST,
        headers={"X-Pushbridge-Pid": str(os.getpid())},
    )


async def _openapi(request: Request) -> Response:
    return Response(orjson.dumps(request.app.state.openapi), media_type="application/json")


async def _problem_page(request: Request) -> Response:
    accept = request.headers.get("accept", "")
    return problem_page(request.path_params["code"], "text/html" in accept)


def create_app(
    rt: Runtime,
    role: Role = "all",
    extra_routes: Sequence[BaseRoute] = (),
    lifespan: Lifespan | None = None,
) -> Starlette:
    """The HTTP side of a process. A worker-only process serves the operations routes
    only. Whatever else runs in the process (the engine) is started by `lifespan`."""
    ops = [*OPS_ROUTES, Route("/metrics", _metrics)]
    api = [
        COLLECTION_ROUTE,
        *JOB_ROUTES,
        *PUSH_ROUTES,
        Route("/openapi.json", _openapi),
        Route("/problems/{code}", _problem_page),
        *console_routes(),
        *extra_routes,
    ]
    app = Starlette(
        # the extra routes (dev mode's emulator) stay on a worker: it may be the dev process
        # that others joined (see bridge/embedded_share.py)
        routes=[*ops, *extra_routes] if role == "worker" else [*ops, *api],
        middleware=[Middleware(ClearContext), Middleware(CatchAll)],
        exception_handlers={
            Problem: _problem,
            HTTPException: _http_error,
            RedisError: _store_down,
            RedisClusterException: _store_down,  # not a RedisError (a cluster without a slot map)
        },
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.openapi = openapi_spec()
    app.state.body_budget = MemoryBudget(rt.config.listen.body_memory_bytes)
    return app
