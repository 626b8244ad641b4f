"""Tests marked `serial` measure time, latency or memory against bounds that the load of
other tests would break: under pytest-xdist (`-n`), such a test runs while no other test
of the run does. Without xdist there is nothing to wait for.

A readers-writer lock over flock(2), on files in the run's base temp dir (shared by its
workers, not by other runs): every test holds the shared lock, a serial test the
exclusive one. Both first take a turnstile, which a serial test keeps while it waits for
the tests under way to end, so the tests that come after it wait behind it instead of
keeping it out for ever. The `serial` tests are also put last (conftest.py), so that the
others run in parallel before them, not around them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest


def lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The run's shared dir under xdist (workers' base temps are its popen-gwN), else None."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return tmp_path_factory.getbasetemp().parent


@contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)  # blocks until granted
        yield
    finally:
        os.close(fd)  # closing the file releases its lock


@contextmanager
def run_slot(folder: Path | None, serial: bool) -> Iterator[None]:
    """Held for a test's setup, call and teardown: alone if `serial`, else shared with the
    other tests whose lock files are in `folder` (None: nothing to share, nothing held)."""
    if folder is None:
        yield
        return
    turnstile, tests = folder / "serial.turnstile.lock", folder / "serial.tests.lock"
    with ExitStack() as held:
        if serial:
            held.enter_context(_flock(turnstile, fcntl.LOCK_EX))
            held.enter_context(_flock(tests, fcntl.LOCK_EX))
        else:
            with _flock(turnstile, fcntl.LOCK_EX):  # passes, unless a serial test waits
                pass
            held.enter_context(_flock(tests, fcntl.LOCK_SH))
        yield
