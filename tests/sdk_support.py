"""For the SDK fidelity tests: an app served on 127.0.0.1 in a thread (the SDKs are
synchronous), and proof that an SDK talks to 127.0.0.1 only: every proxy variable points at
a listener on loopback that records whoever connects to it (and answers nothing), with only
loopback exempt, so a request for any other host, from the test or from a background thread
of the SDK, goes to the listener and is seen."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from bridge.store.embedded import free_port

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


@contextlib.contextmanager
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Yields the first bytes of each connection that tried to leave 127.0.0.1."""
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    seen.append(conn.recv(200))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    try:
        yield seen
    finally:
        stop.set()
        thread.join(2)
        listener.close()


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
