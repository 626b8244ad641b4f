"""Script calls on a Redis/Valkey Cluster.

redis-py's cluster pipeline refuses EVALSHA, so the store groups its calls itself: each
call's slot (every key of a call shares one hash tag, see keys.py) names the master that
owns it in the client's slot map, and each master gets one plain pipeline on one of its
own connections; the masters are sent to concurrently. A batch costs one round trip per
master it touches, as a single node's costs one.

What a cluster answers during a resharding or a failover is handled here, for the calls
it concerns only:

- MOVED: the slot map is patched (redis-py's `move_slot`) and the call sent to the new
  owner; ASK: sent once to the named node, after ASKING, on the same connection;
- NOSCRIPT (a new master, a restarted node, SCRIPT FLUSH): every script is loaded on
  that node and the call sent again;
- TRYAGAIN, CLUSTERDOWN, a connection error or timeout (a dead master before its
  replica is promoted): the slot map is read again from the cluster and the call retried
  after a short pause.

Calls still failing after a few rounds fail the whole batch with
`ClusterUnavailableError`, a connection error: the store's callers retry that with a
backoff (scripts are safe to run twice) or answer 503. Waits for replicas (replicas.py)
end each master's pipeline that carries an acknowledged write."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, PipelineCommand
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import TimeoutError as StoreTimeoutError

from bridge.store.replicas import ReplicaWaits

if TYPE_CHECKING:
    from bridge.store.scripts import Call, Script

ROUNDS = 4  # sends of a batch's failing calls before the batch fails
PAUSE_S = 0.05  # before a round after a transient error, doubled each round


class ClusterUnavailableError(StoreConnectionError):
    """The cluster could not take the calls (no master for a slot, nodes unreachable, the
    slot map cannot be read); transient: retry later."""


TRANSIENT = (
    StoreConnectionError,
    StoreTimeoutError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,  # a demoted master that has not yet said MOVED
)


@dataclass
class _Pending:
    index: int
    ask: str | None = None  # "host:port" of an ASK redirect


@dataclass
class _Round:
    retry: list[_Pending] = field(default_factory=list)
    refresh: bool = False  # the slot map must be read again
    pause: bool = False  # a transient error: pause before the next round
    errors: list[Exception] = field(default_factory=list)


class ClusterPipelines:
    """Runs batches of script calls on a cluster, one pipeline per master."""

    def __init__(
        self,
        client: RedisCluster,
        scripts: list[Script],
        waits: ReplicaWaits,
        tally: Counter[str],
    ) -> None:
        self.client = client
        self.scripts = scripts  # every script of the client: loaded on a node that lacks one
        self.waits = waits
        self.tally = tally

    def shard(self, call: Call) -> str | None:
        """The name of the master that owns the call's slot (None: not known now)."""
        try:
            return self._node_for(call, None).name
        except (RedisClusterException, KeyError, IndexError):  # no map yet; no keys
            return None

    async def run(self, calls: list[Call]) -> list[Any]:
        """A reply or an exception (a script's own error) per call; raises
        ClusterUnavailableError when the cluster could not take them all."""
        replies: list[Any] = [None] * len(calls)
        pending = [_Pending(i) for i in range(len(calls))]
        state = _Round()
        for round_no in range(ROUNDS):
            if round_no:
                if state.refresh:
                    await self._refresh(state)
                if state.pause:
                    await asyncio.sleep(PAUSE_S * 2 ** (round_no - 1))
            state = await self._round(calls, pending, replies)
            if not state.retry:
                return replies
            pending = state.retry
        detail = "; ".join(sorted({f"{type(e).__name__}: {e}" for e in state.errors})[:3])
        raise ClusterUnavailableError(
            f"the cluster did not take {len(pending)} of {len(calls)} calls: {detail}"
        )

    async def _round(
        self, calls: list[Call], pending: list[_Pending], replies: list[Any]
    ) -> _Round:
        await self._ensure_initialized()
        state = _Round()
        groups: dict[str, tuple[ClusterNode, list[_Pending]]] = {}
        for p in pending:
            if not calls[p.index][1]:  # no key, no slot: every store script has keys
                replies[p.index] = RedisClusterException("a script call without keys")
                continue
            try:
                node = self._node_for(calls[p.index], p.ask)
            except (RedisClusterException, KeyError) as e:  # a slot without a master
                state.retry.append(p)
                state.errors.append(e)
                state.refresh = state.pause = True
                continue
            groups.setdefault(node.name, (node, []))[1].append(p)
        sent = await asyncio.gather(
            *(self._send(node, [calls[p.index] for p in ps], ps) for node, ps in groups.values()),
            return_exceptions=True,
        )
        for (node, ps), result in zip(groups.values(), sent, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                await self._node_failed(node, ps, result, state)
                continue
            await self._sort(node, ps, result, replies, state)
        return state

    def _node_for(self, call: Call, ask: str | None) -> ClusterNode:
        if ask is not None:
            host, port = ask.rsplit(":", 1)
            node = self.client.get_node(host=host, port=int(port))
            if node is None:
                raise KeyError(ask)
            return node
        _, keys, _ = call
        slot = self.client.keyslot(keys[0])
        return self.client.nodes_manager.get_node_from_slot(slot)

    async def _send(self, node: ClusterNode, calls: list[Call], ps: list[_Pending]) -> list[Any]:
        """One pipeline on one of the node's connections: the calls (each after ASKING if
        it was redirected by ASK), then the wait for replicas if a call is acknowledged."""
        wait = None
        if any(script.acked for script, _, _ in calls):
            wait = await self.waits.command(node.name, lambda: node.execute_command("INFO"))
        commands: list[PipelineCommand] = []
        for (script, keys, args), p in zip(calls, ps, strict=True):
            if p.ask is not None:
                commands.append(PipelineCommand(len(commands), "ASKING"))
            commands.append(
                PipelineCommand(len(commands), "EVALSHA", script.sha, len(keys), *keys, *args)
            )
        if wait:
            commands.append(PipelineCommand(len(commands), *wait))
        await node.execute_pipeline(commands)
        results = [c.result for c in commands]
        if wait:
            self.waits.check(node.name, wait, results.pop())
        return [r for c, r in zip(commands, results, strict=False) if c.args[0] != "ASKING"]

    async def _node_failed(
        self, node: ClusterNode, ps: list[_Pending], error: Exception, state: _Round
    ) -> None:
        """The node's whole pipeline failed (connection refused or lost, timeout)."""
        if not isinstance(error, TRANSIENT):
            raise error
        self.tally["cluster-node-error"] += 1
        node.update_active_connections_for_reconnect()
        await node.disconnect_free_connections()
        self.client.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
        self.waits.forget(node.name)
        state.retry += [_Pending(p.index) for p in ps]
        state.errors.append(error)
        state.refresh = state.pause = True

    async def _sort(
        self,
        node: ClusterNode,
        ps: list[_Pending],
        results: list[Any],
        replies: list[Any],
        state: _Round,
    ) -> None:
        """Each call's reply: kept, or the call goes to the next round."""
        noscript = False
        for p, reply in zip(ps, results, strict=True):
            if isinstance(reply, MovedError):
                self.tally["cluster-moved"] += 1
                await self.client.nodes_manager.move_slot(reply)
                state.retry.append(_Pending(p.index))
            elif isinstance(reply, AskError):
                self.tally["cluster-ask"] += 1
                state.retry.append(_Pending(p.index, f"{reply.host}:{reply.port}"))
            elif isinstance(reply, NoScriptError):
                noscript = True
                state.retry.append(_Pending(p.index, p.ask))
            elif isinstance(reply, TRANSIENT):
                state.retry.append(_Pending(p.index))
                state.errors.append(reply)
                state.pause = True
                state.refresh = state.refresh or not isinstance(reply, TryAgainError)
            else:
                replies[p.index] = reply
        if noscript:
            await self._load_scripts(node)

    async def _load_scripts(self, node: ClusterNode) -> None:
        self.tally["cluster-script-load"] += 1
        commands = [
            PipelineCommand(i, "SCRIPT", "LOAD", s.source) for i, s in enumerate(self.scripts)
        ]
        await node.execute_pipeline(commands)
        for c in commands:
            if isinstance(c.result, Exception):
                raise c.result

    async def _ensure_initialized(self) -> None:
        try:
            await self.client.initialize()
        except RedisClusterException as e:  # a plain RedisCluster (StoreCluster translates)
            raise ClusterUnavailableError(f"the cluster's slot map cannot be read: {e}") from e

    async def _refresh(self, state: _Round) -> None:
        """Read the slot map again (one refresh at a time; concurrent ones share it)."""
        self.tally["cluster-refresh"] += 1
        try:
            await self.client.nodes_manager.initialize()
        except (RedisClusterException, RedisError) as e:
            state.errors.append(e)


class StoreCluster(RedisCluster):
    """redis-py's cluster client whose failures are all RedisErrors: a cluster that cannot
    be reached or has slots without a master (RedisClusterException: "cannot be connected",
    "All slots are not covered", SlotNotCoveredError) is a store that is unavailable, which
    the API answers with 503 and the engine retries."""

    async def initialize(self, *args: Any, **kwargs: Any) -> StoreCluster:
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as e:
            raise ClusterUnavailableError(f"the cluster's slot map cannot be read: {e}") from e
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as e:
            raise ClusterUnavailableError(str(e)) from e

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return StoreClusterPipeline(self, transaction)  # type: ignore[abstract]


class StoreClusterPipeline(ClusterPipeline):
    """A plain-command pipeline (reads) whose failures are RedisErrors, as StoreCluster's."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as e:  # a slot without a master (SlotNotCoveredError)
            raise ClusterUnavailableError(str(e)) from e


SLOTS = 16384


async def cluster_report(client: RedisCluster) -> list[tuple[str, str]]:
    """What `pushbridge check` says of a cluster: (ok|warn|error, text) lines for its state,
    the slots its masters cover, and each master with its replicas."""
    info = await client.execute_command("CLUSTER INFO")
    shards = await client.execute_command("CLUSTER SHARDS")
    state = str(info.get("cluster_state"))
    ok_slots = int(info.get("cluster_slots_ok", 0))
    lines = [
        (
            "ok" if state == "ok" and ok_slots == SLOTS else "error",
            f"state {state}, {ok_slots} of {SLOTS} slots served "
            f"({info.get('cluster_slots_assigned')} assigned, "
            f"{info.get('cluster_slots_fail')} failing)",
        )
    ]
    for shard in shards:
        lines += shard_lines(shard)
    return lines


def shard_lines(shard: dict[str, Any]) -> list[tuple[str, str]]:
    slots = list(shard.get("slots") or [])
    ranges = [(int(a), int(b)) for a, b in zip(slots[::2], slots[1::2], strict=True)]
    if not ranges:  # a shard without slots (a node being added, or a left-over)
        return []
    covered = sum(b - a + 1 for a, b in ranges)
    nodes = shard.get("nodes") or []

    def name(n: dict[str, Any]) -> str:
        return f"{n.get('endpoint') or n.get('ip')}:{n.get('port') or n.get('tls-port')}"

    masters = [n for n in nodes if n.get("role") == "master" and n.get("health") == "online"]
    replicas = [n for n in nodes if n.get("role") == "replica"]
    spans = ", ".join(f"{a}-{b}" for a, b in ranges)
    if not masters:
        return [("error", f"slots {spans} ({covered}): no master online")]
    up = [n for n in replicas if n.get("health") != "fail"]
    listed = ", ".join(f"{name(n)} ({n.get('health')})" for n in replicas) or "none"
    kind = "ok" if up else "warn"
    text = f"master {name(masters[0])}: slots {spans} ({covered}), replicas {listed}"
    if not up:
        text += "; without a replica its slots stop when it fails, and writes wait for none"
    return [(kind, text)]
