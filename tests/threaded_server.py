"""A Starlette app served by uvicorn in a thread on 127.0.0.1, for tests that drive it
with a synchronous client (providers' official SDKs); and a guard that records any
attempt to reach beyond loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette

from bridge.store.embedded import free_port


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Serve app until the block ends; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


def _is_loopback(host: Any) -> bool:
    if host in (None, "localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


def record_outside_connections() -> list[tuple[str, Any]]:
    """From now on, every name lookup or connection of this process to a host that is not
    loopback is appended to the returned list (audit hooks cannot be removed: install once)."""
    seen: list[tuple[str, Any]] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.getaddrinfo" and not _is_loopback(args[0]):
            seen.append((event, args[0]))
        elif (
            event == "socket.connect"
            and isinstance(args[1], tuple)
            and not _is_loopback(args[1][0])
        ):
            seen.append((event, args[1]))

    sys.addaudithook(hook)
    return seen
