"""The lock that runs a `serial` test alone under xdist (tests/support/serial.py): a
serial test waits for the tests under way, and the tests that come after it wait for it."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.serial import run_slot


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.01)


def _held(path: Path) -> bool:
    """Someone holds a lock on `path` (an exclusive one cannot be had at once)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _start(folder: Path, serial: bool, name: str, log: list[str]) -> threading.Event:
    release = threading.Event()

    def hold() -> None:
        with run_slot(folder, serial):
            log.append(f"{name} in")
            release.wait(10)
            log.append(f"{name} out")

    threading.Thread(target=hold, daemon=True).start()
    return release


def test_a_serial_test_runs_alone_and_the_next_tests_wait_behind_it(tmp_path: Path):
    log: list[str] = []
    release_a = _start(tmp_path, False, "a", log)
    _until(lambda: log == ["a in"])
    release_b = _start(tmp_path, False, "b", log)
    _until(lambda: log == ["a in", "b in"])  # tests share the lock
    release_s = _start(tmp_path, True, "serial", log)
    _until(lambda: _held(tmp_path / "serial.turnstile.lock"))  # the serial test waits
    release_c = _start(tmp_path, False, "c", log)  # a test that comes after it
    time.sleep(0.2)
    assert log == ["a in", "b in"]
    release_a.set()
    _until(lambda: len(log) == 3)
    time.sleep(0.2)
    assert log == ["a in", "b in", "a out"]  # the serial test still waits for b
    release_b.set()
    _until(lambda: len(log) == 5)
    time.sleep(0.2)
    assert log[3:] == ["b out", "serial in"]  # alone; c waits behind it
    release_s.set()
    _until(lambda: len(log) == 7)
    assert log[5:] == ["serial out", "c in"]
    release_c.set()
    _until(lambda: log[-1] == "c out")
