"""One embedded store per data_dir, shared by every process started on it.

`pushbridge serve --role api` and `--role worker` without a store URL used to start
one Valkey each on the same directory (two servers on one append-only file, jobs
stranded in the other one). Now the first process starts the store and records it in
`<data_dir>/store.json` (its pid, the store's URL, and in dev mode its emulator's URL);
a later process finds it there, checks that its owner lives and that it answers PING,
and joins it. A lock file serialises the decision, so two processes started at once
do not both start one. The owner stops the store when it exits; processes that joined
it then wait for a store (start them again after the owner).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from bridge.store.embedded import EmbeddedValkey

STATE_FILE = "store.json"
LOCK_FILE = "store.lock"


@dataclass(frozen=True)
class SharedStore:
    url: str
    owner_pid: int
    emulator_url: str | None = None  # dev mode: the emulator served by the owner


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _shutdown(url: str) -> None:
    """Stop an orphaned store (its owner was killed): it writes its append-only file first."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=1)
    with contextlib.suppress(redis.RedisError):
        client.shutdown()
    client.close()


def _read_state(data_dir: Path) -> SharedStore | None:
    try:
        return SharedStore(**json.loads((data_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(data_dir: str | Path) -> SharedStore | None:
    """The store another live process runs in data_dir, if it answers."""
    state = _read_state(Path(data_dir).resolve())
    if state and _alive(state.owner_pid) and _answers(state.url):
        return state
    return None


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class EmbeddedShare:
    """Start the embedded store of data_dir, or join the one another process runs there."""

    def __init__(self, data_dir: str | Path, emulator_url: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.emulator_url = emulator_url
        self.server: EmbeddedValkey | None = None  # set when this process owns the store
        self.store: SharedStore | None = None

    @property
    def owner(self) -> bool:
        return self.server is not None

    def open(self) -> SharedStore:
        with _locked(self.data_dir):
            state = _read_state(self.data_dir)
            if state and _answers(state.url):
                if _alive(state.owner_pid):
                    self.store = state
                    return state
                _shutdown(state.url)
            server = EmbeddedValkey(self.data_dir / "valkey")
            server.start()
            self.server = server
            self.store = SharedStore(server.url, os.getpid(), self.emulator_url)
            (self.data_dir / STATE_FILE).write_text(json.dumps(asdict(self.store)))
        return self.store

    def close(self) -> None:
        if self.server is None:
            return
        with _locked(self.data_dir):
            if _read_state(self.data_dir) == self.store:
                (self.data_dir / STATE_FILE).unlink(missing_ok=True)
            self.server.stop()
        self.server = None
