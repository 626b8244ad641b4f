"""Waiting for replicas: the writes a promise rests on (a job's creation before its 202, a
commit) are acknowledged by a replica before the caller hears of them, so that a master
that dies after answering loses nothing its promoted replica does not have.

Replication is asynchronous: without this, a write a master answered can vanish when its
replica is promoted. After such writes the pipeline that carried them ends with

- `WAIT <n> <timeout_ms>` (mode "wait", every Redis and Valkey): the write is in the
  memory of n replicas;
- `WAITAOF <local> <n> <timeout_ms>` (mode "waitaof", Redis >= 7.2, Valkey): it is also
  fsynced to the append-only file of n replicas (and of the master, if it has AOF on).
  This costs up to a second with `appendfsync everysec` and needs AOF on the replicas;
  a server without WAITAOF gets WAIT.

n is the number of replicas the node has online (from INFO, refreshed every few seconds):
a store without replicas waits for nothing. A wait that times out leaves the write in
place (it was applied) and is counted ("replica-ack-missed") and logged: the promise is
then only as strong as the master's own persistence."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

AckMode = Literal["wait", "waitaof", "off"]
REFRESH_S = 5.0  # how old a node's replica count may be
Info = Callable[[], Awaitable[Any]]  # the node's INFO (parsed dict or raw text)


@dataclass(frozen=True)
class ReplicaAck:
    mode: AckMode = "wait"
    timeout_ms: int = 1000


@dataclass
class NodeInfo:
    replicas: int  # online
    has_waitaof: bool
    aof: bool
    at: float = field(default_factory=time.monotonic)


def parse_info(info: Any) -> dict[str, Any]:
    """INFO as a dict, whether the client parsed it or not."""
    if isinstance(info, dict):
        return info
    out: dict[str, Any] = {}
    for line in str(info).splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            out[key] = value.strip()
    return out


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(".")[:3])
    except ValueError:
        return (0,)


def node_info(info: Any) -> NodeInfo:
    d = parse_info(info)
    online = 0
    for key, value in d.items():
        if key.startswith("slave") and key[5:].isdigit():
            state = value.get("state") if isinstance(value, dict) else _field(value, "state")
            online += state == "online"
    has_waitaof = "valkey_version" in d or _version(str(d.get("redis_version", ""))) >= (7, 2)
    return NodeInfo(online, has_waitaof, str(d.get("aof_enabled", "0")) == "1")


def _field(text: str, name: str) -> str | None:
    for part in str(text).split(","):
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
    return None


class ReplicaWaits:
    """Per node (by name): the wait command that ends a pipeline carrying acknowledged writes."""

    def __init__(self, ack: ReplicaAck, tally: Counter[str] | None = None) -> None:
        self.ack = ack
        self.tally = Counter() if tally is None else tally
        self._nodes: dict[str, NodeInfo] = {}
        self._fetching: dict[str, asyncio.Future[NodeInfo]] = {}
        self._log = structlog.get_logger("pushbridge")

    async def command(self, node: str, info: Info) -> tuple[Any, ...] | None:
        """The command to append after acknowledged writes on `node`; None: nothing to wait for."""
        if self.ack.mode == "off":
            return None
        known = await self._node(node, info)
        if known.replicas == 0:
            return None
        self.tally["replica-wait"] += 1
        if self.ack.mode == "waitaof" and known.has_waitaof:
            return ("WAITAOF", int(known.aof), known.replicas, self.ack.timeout_ms)
        return ("WAIT", known.replicas, self.ack.timeout_ms)

    def check(self, node: str, command: tuple[Any, ...], reply: Any) -> bool:
        """Whether the wait was acknowledged; if not, count it and look at the node again."""
        wanted = command[-2]
        if isinstance(reply, Exception):
            got = 0
        elif command[0] == "WAITAOF":  # [local fsyncs, replica fsyncs]
            got = int(reply[1]) if int(reply[0]) >= command[1] else 0
        else:
            got = int(reply)
        if got >= wanted:
            return True
        self.tally["replica-ack-missed"] += 1
        self._nodes.pop(node, None)
        self._log.warning(
            "replicas did not acknowledge a write in time; it stands, unreplicated",
            node=node,
            wanted=wanted,
            acknowledged=got,
            wait=command[0],
            error=str(reply) if isinstance(reply, Exception) else None,
        )
        return False

    def forget(self, node: str) -> None:
        self._nodes.pop(node, None)

    async def _node(self, node: str, info: Info) -> NodeInfo:
        known = self._nodes.get(node)
        if known is not None and time.monotonic() - known.at < REFRESH_S:
            return known
        pending = self._fetching.get(node)
        if pending is None:  # one INFO per node at a time, however many pipelines ask
            pending = asyncio.ensure_future(self._fetch(node, info))
            self._fetching[node] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(node, None))
        return await asyncio.shield(pending)

    async def _fetch(self, node: str, info: Info) -> NodeInfo:
        self.tally["replica-info"] += 1
        fresh = node_info(await info())
        before = self._nodes.get(node)
        if before is None or before.replicas != fresh.replicas:
            self._log.info("store node replicas", node=node, replicas_online=fresh.replicas)
        self._nodes[node] = fresh
        return fresh
