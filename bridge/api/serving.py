"""Running ASGI apps with uvicorn inside an existing event loop (demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from bridge.api.httpguard import guarded_protocol
from bridge.store.embedded import free_port


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
        timeout_graceful_shutdown=grace_s,
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
) -> RunningServer:
    port = port or free_port(host)
    config = uvicorn_config(
        app, host, port, max_header_bytes=max_header_bytes, header_timeout_s=header_timeout_s
    )
    server = uvicorn.Server(config)
    if not signals:
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited before starting")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, port)
