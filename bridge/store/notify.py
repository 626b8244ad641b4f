"""Job notices over pub/sub: what one process tells the others about a job, at no cost
per waiting request.

The store's scripts publish a notice on the job's partition channel (`Keys.events`) in
the same atomic step that changes the job:

    done <job id>                   the job became terminal (commit.lua, cancel.lua)
    push <job id> <how> <upstream>  a verified push arrived for it (poke.lua); `how` is
                                    `due` (made due now in the store), `held` (a claim
                                    holds it: its holder is to act) or `queued` (its
                                    submit is under way: the submitter is to act)

Each process subscribes once to every partition's channel (`Subscriber`) and hands the
notices to its in-process listeners (engine/notices.py). Pub/sub delivers at most once:
notices sent while a subscription is down are lost, so every (re)subscription is
reported (`on_subscribed`) and the listeners re-check what they wait for then.

Standalone Redis/Valkey: PUBLISH and SUBSCRIBE. Redis Cluster: SPUBLISH and SSUBSCRIBE
(Redis 7 or Valkey 7 and later): a shard channel lives in the slot of its hash tag, the
partition's, so a script publishes on its own node (a script may not reach another slot)
and the subscriber connects to the node of each partition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from bridge.store.keys import Keys, valid_job_id

NoticeKind = Literal["done", "push"]
PUSH_HOWS = frozenset({"due", "held", "queued"})
POLL_S = 1.0  # a standalone subscriber's read timeout (it blocks; this only bounds a read)
CLUSTER_POLL_S = 0.01  # a cluster subscriber reads its nodes' connections in turn
MAX_BACKOFF_S = 5.0


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    job_id: str
    how: str = ""  # push: due | held | queued
    upstream: str = ""  # push: the job's upstream


def publish_command(cluster: bool) -> str:
    """The command the scripts publish notices with."""
    return "SPUBLISH" if cluster else "PUBLISH"


def parse_notice(data: Any) -> Notice | None:
    """A notice from a message's data; None for anything else (never raises)."""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    if not isinstance(data, str):
        return None
    kind, _, rest = data.partition(" ")
    if kind == "done" and valid_job_id(rest):
        return Notice("done", rest)
    if kind == "push":
        parts = rest.split(" ", 2)
        if len(parts) == 3 and valid_job_id(parts[0]) and parts[1] in PUSH_HOWS:
            return Notice("push", parts[0], parts[1], parts[2])
    return None


class Resubscribe(Exception):
    """The server dropped a subscription (a slot moved): subscribe again."""


class Subscriber:
    """One subscription of a process to the notices of every partition.

    `run()` keeps it up until cancelled: after any failure it subscribes again (with
    backoff) and calls `on_subscribed` once every channel is confirmed, since notices
    may have been lost meanwhile. `ready` says whether it is subscribed now."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        keys: Keys,
        on_notice: Callable[[Notice], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        self.redis = redis
        self.channels = [keys.events(p) for p in range(keys.partitions)]
        self.on_notice = on_notice
        self.on_subscribed = on_subscribed
        self.cluster = isinstance(redis, RedisCluster)
        self.ready = False
        self.sessions = 0  # subscriptions made, for tests and logs
        self.log = structlog.get_logger("pushbridge.notify")

    async def run(self) -> None:
        delay_s = 0.1
        while True:
            try:
                await (self._cluster_session() if self.cluster else self._session())
            except (RedisError, OSError, Resubscribe) as e:
                was_ready, self.ready = self.ready, False
                self.log.warning(
                    "notice subscription lost; subscribing again",
                    error=f"{type(e).__name__}: {e}",
                    sleep_s=delay_s,
                )
                if was_ready:
                    delay_s = 0.1
                await asyncio.sleep(delay_s)
                delay_s = min(MAX_BACKOFF_S, delay_s * 2)
            finally:
                self.ready = False

    async def _session(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(*self.channels)
            pending = set(self.channels)
            while True:
                message = await pubsub.get_message(timeout=POLL_S)
                if message is not None:
                    self._handle(message, pending)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def _cluster_session(self) -> None:
        assert isinstance(self.redis, RedisCluster)
        await self.redis.initialize()  # the slot map, to find each channel's node
        pubsub = self.redis.pubsub()
        try:
            await pubsub.ssubscribe(*self.channels)
            pending = set(self.channels)
            while True:
                if not pubsub.node_pubsub_mapping:
                    raise Resubscribe("no node holds a subscription")
                message = await pubsub.get_sharded_message(timeout=CLUSTER_POLL_S)
                if message is not None:
                    self._handle(message, pending)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _handle(self, message: dict[str, Any], pending: set[str]) -> None:
        kind = message.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind in ("message", "smessage"):
            notice = parse_notice(message.get("data"))
            if notice is not None:
                self._call(self.on_notice, notice)
        elif kind in ("subscribe", "ssubscribe"):
            if self.ready:  # the client reconnected and subscribed again by itself
                self.ready = False
                pending.update(self.channels)
            channel = message.get("channel")
            pending.discard(channel.decode() if isinstance(channel, bytes) else str(channel))
            if not pending:
                self.ready = True
                self.sessions += 1
                self._call(self.on_subscribed)
        elif kind in ("unsubscribe", "sunsubscribe"):
            raise Resubscribe(f"the server ended the subscription to {message.get('channel')}")

    def _call(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception as e:  # a listener's bug must not end the subscription
            self.log.error("notice listener failed", error=f"{type(e).__name__}: {e}")
