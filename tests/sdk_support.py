"""For the SDK fidelity tests (the SDKs are synchronous): an app served on 127.0.0.1 in a
thread, and three ways to prove that an SDK talks to 127.0.0.1 only:

- `offline`: every proxy variable points at a listener on loopback that records whoever
  connects to it (and answers nothing), with only loopback exempt, so a request for any
  other host, from the test or from a background thread of the SDK, goes to the listener;
- `no_outside_connections`: an audit hook sees every name lookup and connection of the
  process, whatever proxy settings the SDK honours or ignores;
- `loopback_connects`: socket.connect fails for any address but 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from bridge.store.embedded import free_port

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread, until the block ends;
    yields its URL."""
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


def _is_loopback(host: Any) -> bool:
    if host in (None, "localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


@functools.cache
def outside_connections() -> list[tuple[str, Any]]:
    """Every name lookup or connection of this process to a host that is not loopback, from
    the first call on (an audit hook cannot be removed: it is installed once)."""
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


@contextlib.contextmanager
def no_outside_connections() -> Iterator[None]:
    """Fails if the block looked up or connected to any host beyond loopback."""
    seen = outside_connections()
    before = len(seen)
    yield
    assert seen[before:] == []


@contextlib.contextmanager
def loopback_connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any connection opened to somewhere else than 127.0.0.1; yields the hosts
    connected to, and fails if there was none."""
    seen: list[str] = []
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        seen.append(host)
        assert host == "127.0.0.1", f"the SDK connected to {host}"
        connect(sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield seen
    assert seen, "no connection was made at all"
    assert set(seen) == {"127.0.0.1"}
