"""`pushbridge serve --workers N`: N processes that share one listening socket and the
store, so a pod uses all of its CPUs.

The parent binds the socket, forks the workers (each builds its own runtime: store
client, HTTP clients, engine), forwards SIGTERM/SIGINT to them, restarts one that dies
unexpectedly (with a growing pause, so a crash loop does not spin), and exits 0 once
all of them have shut down gracefully. The kernel spreads new connections over the
processes accepting on the shared socket; the store spreads the work (claims, leases).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import structlog

RESTART_PAUSE_MAX_S = 10.0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, which a container's cpuset limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def listening_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Runs `child(sock)` in `n` forked processes until told to stop."""

    def __init__(self, n: int, child: Callable[[socket.socket], None]) -> None:
        self.n = n
        self.child = child
        self.pids: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self.log = structlog.get_logger("pushbridge.supervisor")

    def _spawn(self, sock: socket.socket, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: default signal handling, then serve until told to stop
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                self.child(sock)
            except BaseException:
                code = 1
            os._exit(code)
        self.pids[pid] = slot

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signal.SIGTERM)

    def run(self, sock: socket.socket) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for slot in range(self.n):
            self._spawn(sock, slot)
        self.log.info("workers started", workers=self.n, pids=sorted(self.pids))
        pause_s, worst = 0.5, 0
        while self.pids:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            slot = self.pids.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping or slot is None:
                worst = max(worst, code if code > 0 else 0)
                continue
            self.log.error("worker exited; restarting it", pid=pid, exit_code=code)
            time.sleep(pause_s)
            pause_s = min(RESTART_PAUSE_MAX_S, pause_s * 2)
            self._spawn(sock, slot)
        sock.close()
        return worst
