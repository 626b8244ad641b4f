"""A local Redis/Valkey Cluster on 127.0.0.1 (masters with one replica each), started and
stopped by us: for the test suite, the benchmarks and trying cluster mode by hand.

Every node is a server process with `--cluster-enabled yes`; the cluster is formed with
`valkey-cli --cluster create` (or redis-cli beside a redis-server). A node's bus port is
its port + 10000, so node ports are taken at or below 55535."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bridge.store.embedded import EmbeddedStoreError, server_binary

MAX_NODE_PORT = 55535  # + 10000 for the cluster bus must stay a valid port


def free_cluster_port(low: int = 20000, high: int = MAX_NODE_PORT) -> int:
    """A port p such that both p and its bus port p + 10000 are free on 127.0.0.1."""
    for _ in range(200):
        port = random.randint(low, high)
        if _free(port) and _free(port + 10000):
            return port
    raise EmbeddedStoreError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cli_binary(server: str) -> str:
    """The cli beside the server binary (valkey-cli or redis-cli), else one on PATH."""
    folder = Path(server).parent
    for name in ("valkey-cli", "redis-cli"):
        if (folder / name).exists():
            return str(folder / name)
    for name in ("valkey-cli", "redis-cli"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedStoreError(f"no valkey-cli or redis-cli beside {server}")


@dataclass
class Node:
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EmbeddedCluster:
    """`masters` masters with `replicas` replicas each, on 127.0.0.1."""

    def __init__(
        self,
        data_dir: str | Path,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        server: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.server = server or server_binary()
        self.appendonly = appendonly
        self.nodes: list[Node] = []

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://{n.address}/0" for n in self.nodes]

    def command(self, node: Node) -> list[str]:
        return [
            self.server,
            "--bind", "127.0.0.1",
            "--port", str(node.port),
            "--dir", str(node.data_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node.data_dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
            "--daemonize", "no",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", str(node.data_dir / "server.log"),
        ]  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for i in range(self.masters * (1 + self.replicas)):
            node = Node(free_cluster_port(), self.data_dir / f"node{i}")
            node.data_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(node)
            self.start_node(node)
        try:
            for node in self.nodes:
                self._wait_answers(node, deadline)
            self._create(deadline)
            self.wait_healthy(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise

    def start_node(self, node: Node) -> None:
        node.proc = subprocess.Popen(
            self.command(node),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_answers(self, node: Node, deadline: float) -> None:
        with node.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.RedisError:
                    if node.proc is not None and node.proc.poll() is not None:
                        raise EmbeddedStoreError(
                            f"cluster node {node.address} exited; see {node.data_dir}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def _create(self, deadline: float) -> None:
        args = [cli_binary(self.server), "--cluster", "create"]
        args += [n.address for n in self.nodes]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic())
        )
        if done.returncode != 0:
            raise EmbeddedStoreError(f"cluster create failed: {done.stdout[-2000:]}")

    def roles(self) -> dict[str, list[str]]:
        """master address -> its replicas' addresses, from a running node's CLUSTER NODES."""
        for node in self.nodes:
            if not node.running:
                continue
            with node.client() as client:
                try:
                    text = client.execute_command("CLUSTER", "NODES")
                except redis.exceptions.RedisError:
                    continue
            return _roles(text if isinstance(text, str) else _join_nodes(text))
        return {}

    def node(self, address: str) -> Node:
        return next(n for n in self.nodes if n.address == address)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every running node says cluster_state:ok, every master has its replicas
        (online, in sync) and the running nodes agree on that."""
        deadline = time.monotonic() + timeout_s
        while (problem := self.problem()) is not None:
            if time.monotonic() > deadline:
                raise EmbeddedStoreError(f"cluster not healthy within {timeout_s:.0f} s: {problem}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why the cluster is not healthy yet (None: it is)."""
        try:
            for node in self.nodes:
                if node.running:
                    with node.client() as client:
                        problem = self._node_problem(client)
                    if problem:
                        return f"{node.address}: {problem}"
            roles = self.roles()
            if len(roles) != self.masters:
                return f"masters {roles}"
            return None
        except redis.exceptions.RedisError as e:
            return f"{type(e).__name__}: {e}"

    def _node_problem(self, client: redis.Redis) -> str | None:
        state = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        if "cluster_state:ok" not in state:
            return "cluster_state not ok"
        info = client.info("replication")
        if info["role"] == "master" and self.replicas:
            states = [v.get("state") for k, v in info.items() if k.startswith("slave")]
            if len(states) < self.replicas or any(s != "online" for s in states):
                return f"master's replicas {states}"
        if info["role"] == "slave" and info.get("master_link_status") != "up":
            return f"replica link {info.get('master_link_status')}"
        return None

    def kill(self, node: Node) -> None:
        """kill -9: no goodbye to the cluster, nothing flushed."""
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()

    def restart(self, node: Node) -> None:
        """Start a stopped node again (it rejoins from its nodes.conf, as a replica if its
        replica took over meanwhile)."""
        self.start_node(node)
        self._wait_answers(node, time.monotonic() + 10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _join_nodes(reply: object) -> str:
    if isinstance(reply, dict):  # redis-py parses CLUSTER NODES into a dict on some versions
        return "\n".join(
            f"{v.get('node_id')} {k} {v.get('flags')} {v.get('master_id')}"
            for k, v in reply.items()
        )
    return str(reply)


def _roles(text: str) -> dict[str, list[str]]:
    """master address -> replica addresses, of the nodes that are not failed."""
    by_id: dict[str, tuple[str, str, str]] = {}
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        node_id, addr, flags, master_id = parts[:4]
        by_id[node_id] = (addr.split("@")[0], flags, master_id)
    masters = {
        nid: addr
        for nid, (addr, flags, _) in by_id.items()
        if "master" in flags and "fail" not in flags.replace("fail?", "")
    }
    out: dict[str, list[str]] = {addr: [] for addr in masters.values()}
    for addr, flags, master_id in by_id.values():
        if "slave" in flags and "fail" not in flags and master_id in masters:
            out[masters[master_id]].append(addr)
    return out
