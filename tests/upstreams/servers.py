"""Small servers on 127.0.0.1 for upstream tests: a raw TCP one that may answer anything
(including bytes that are not HTTP), and an HTTP one that records what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api.serving import RunningServer, start_server

NOT_HTTP = b"NOT HTTP AT ALL\r\n\r\n"


def http_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    """Reads one request (head and Content-Length body), writes answer(head), closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    await reader.readexactly(int(value))
            writer.write(answer(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Recorder:
    """An HTTP server whose routes answer from `answers` (path -> (status, JSON)) and
    record every request."""

    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    server: RunningServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def handle(self, request: Request) -> Response:
        await request.body()
        self.seen.append(Seen(request.method, request.url.path, dict(request.headers)))
        status, body = self.answers.get(request.url.path, (404, {"detail": "not found"}))
        return JSONResponse(body, status)

    async def start(self) -> Recorder:
        app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])
        self.server = await start_server(app)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
