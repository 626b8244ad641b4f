"""Running ASGI apps with uvicorn inside an existing event loop (demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from bridge.api.httpguard import guarded_protocol
from bridge.store.embedded import free_port


class DrainingServer(uvicorn.Server):
    """uvicorn that calls `on_drain` as its shutdown begins (SIGTERM, or should_exit), before
    it waits for the requests in flight: requests that wait for a job answer then, with the
    job as it is, instead of holding the shutdown up to its grace period."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None] | None = None):
        super().__init__(config)
        self.on_drain = on_drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_drain is not None:
            self.on_drain()
        await super().shutdown(sockets)


@dataclass
class RunningServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


class QuietServer(DrainingServer):
    """A uvicorn server that leaves the process's signal handlers alone: it is one part
    of a larger program (demo, tests) that handles signals itself, and stops by `stop()`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(
    app: ASGIApp,
    host: str,
    port: int,
    grace_s: float = 10.0,
    max_header_bytes: int = 64 * 1024,
    header_timeout_s: float = 10.0,
) -> uvicorn.Config:
    """uvicorn with httptools behind a guard: request heads are capped in size and time
    (bridge/httpguard.py); idle keep-alive connections close after 30 s."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # uvicorn annotates this int, but passes it to asyncio.wait_for, which takes a float
        timeout_graceful_shutdown=grace_s,  # type: ignore[arg-type]
        loop="none",
        http=guarded_protocol(max_header_bytes, header_timeout_s),
        backlog=4096,
        timeout_keep_alive=30,
    )


async def start_server(
    app: ASGIApp,
    port: int | None = None,
    host: str = "127.0.0.1",
    signals: bool = False,
    max_header_bytes: int = 64 * 1024,
    header_timeout_s: float = 10.0,
    grace_s: float = 10.0,
    on_drain: Callable[[], None] | None = None,
) -> RunningServer:
    """`app` served on host:port (default: a free port); `stop()` lets requests in flight
    finish within grace_s, then cancels them."""
    port = port or free_port(host)
    config = uvicorn_config(
        app,
        host,
        port,
        grace_s,
        max_header_bytes=max_header_bytes,
        header_timeout_s=header_timeout_s,
    )
    server = DrainingServer(config, on_drain) if signals else QuietServer(config, on_drain)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited before starting")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, port)
