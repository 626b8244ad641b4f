"""The store's Lua scripts, loaded one way: each is `lua/_prelude.lua` (the store's
clock), then the files it includes (`lua/_lists.lua`), then `lua/<name>.lua`, and is run
by EVALSHA. A store that lost its
scripts (restarted, or SCRIPT FLUSH) answers NOSCRIPT; this is handled here only:
every script of the client is loaded again and the calls that found none are sent
once more.

How calls reach the store is chosen by the client: a single node gets one pipeline
per batch of calls; a Redis Cluster gets one pipeline per master that owns the calls'
slots (cluster.py). Scripts loaded `acked` are writes a promise rests on: a pipeline
carrying one ends with a wait for the node's replicas (replicas.py)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError

from bridge.store.client import StoreClient
from bridge.store.cluster import ClusterPipelines
from bridge.store.replicas import ReplicaAck, ReplicaWaits

PRELUDE = "_prelude"
NODE = "standalone"  # the one node of a single-node store, for ReplicaWaits


def lua_source(name: str) -> str:
    return resources.files("bridge.store").joinpath(f"lua/{name}.lua").read_text()


@dataclass(frozen=True)
class Script:
    name: str
    source: str  # the prelude, then the script
    sha: str
    acked: bool = False  # its writes are acknowledged by replicas before the caller hears


Call = tuple[Script, list[str], list[Any]]  # (script, keys, args)


class Scripts:
    """The scripts one client runs. `ack` says how acked scripts wait for replicas
    (default: they do not); `tally` counts cluster redirects, replica waits and misses."""

    def __init__(
        self,
        redis: StoreClient,
        ack: ReplicaAck | None = None,
        tally: Counter[str] | None = None,
    ) -> None:
        self.redis = redis
        self._loaded: list[Script] = []
        self.tally: Counter[str] = Counter() if tally is None else tally
        self.waits = ReplicaWaits(ack or ReplicaAck("off"), self.tally)
        self._cluster = (
            ClusterPipelines(redis, self._loaded, self.waits, self.tally)
            if isinstance(redis, RedisCluster)
            else None
        )

    @property
    def shard(self) -> Callable[[Call], Hashable] | None:
        """Which master a call goes to, on a cluster (None: one server takes every call)."""
        return self._cluster.shard if self._cluster is not None else None

    def load(self, name: str, *includes: str, acked: bool = False) -> Script:
        """The script `name` after the prelude and the `includes` (lua/<include>.lua, shared
        functions such as _lists.lua's); `acked`: its writes wait for the replicas."""
        parts = [lua_source(n) for n in (PRELUDE, *includes, name)]
        source = "\n".join(parts)
        script = Script(name, source, hashlib.sha1(source.encode()).hexdigest(), acked)
        self._loaded.append(script)
        return script

    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One script call (a pipeline of one where it must be followed by a wait, or on a
        cluster)."""
        if self._cluster is not None or (script.acked and self.waits.ack.mode != "off"):
            (reply,) = await self.run([(script, keys, args)])
            if isinstance(reply, Exception):
                raise reply
            return reply
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._load_all()
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def run(self, calls: list[Call]) -> list[Any]:
        """Calls in one pipeline (no SCRIPT EXISTS round trip): a reply or an exception
        per call."""
        if self._cluster is not None:
            return await self._cluster.run(calls)
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._load_all()
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        wait = None
        if any(script.acked for script, _, _ in calls):
            wait = await self.waits.command(NODE, self.redis.info)
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if wait:
                pipe.execute_command(*wait)
            replies = await pipe.execute(raise_on_error=False)
        if wait:
            self.waits.check(NODE, wait, replies.pop())
        return replies

    async def _load_all(self) -> None:
        for script in self._loaded:
            await self.redis.script_load(script.source)
