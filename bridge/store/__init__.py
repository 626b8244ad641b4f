"""The Redis store: every round trip in one place (the `Store` facade).

Key names and the layout are in keys.py, script loading in scripts.py, the client in
connection.py.

A sorted set is both schedule and lease: claiming re-scores a member to
now + lease, so a claimer that dies simply lets it become due again.

A store blip costs seconds, not leases: the calls of a job's steps (create, commit,
release) are retried on fresh connections for up to `retry_s`, a failed claim is
repeated by the next one, and every script is safe to run twice when its reply was
lost (a retried create or commit answers as the first run did and applies nothing
twice; a repeated claim hands out the same claims).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import structlog
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import TimeoutError as StoreTimeoutError

from bridge.config import ConfigError
from bridge.model import Job, JobChange, wire_fields
from bridge.store.autopipe import AutoPipeline
from bridge.store.client import StoreClient, text, text_hash, text_or_none, texts
from bridge.store.keys import (
    MAX_PARTITIONS,
    Index,
    Keys,
    Schedule,
    new_job_id,
    valid_job_id,
)
from bridge.store.lists import JobLists, ListPage, ListQuery
from bridge.store.notify import publish_command
from bridge.store.replicas import ReplicaAck
from bridge.store.scripts import Call, Scripts

__all__ = [
    "After",
    "Backlog",
    "Claim",
    "ClaimBatch",
    "Commit",
    "Created",
    "InFlightLimit",
    "Index",
    "Keep",
    "Keys",
    "ListPage",
    "ListQuery",
    "Remove",
    "Schedule",
    "Source",
    "Store",
    "StoreLayoutError",
    "new_job_id",
    "valid_job_id",
]

T = TypeVar("T")
RETRY_S = 10.0  # how long a step's store call is retried before the step gives up
LAYOUT_VERSION = 1  # of the key layout (keys.py); a store laid out otherwise is refused


class StoreLayoutError(ConfigError):
    """The store holds data laid out for another configuration (partitions, version)."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: str
    due_ms: int = 0
    job: Job | None = None  # None if the job is gone (or its record is unreadable)
    result: str | None = None  # with the deliver schedule


@dataclass
class ClaimBatch:
    now_ms: int
    next_due_ms: int | None
    claims: list[Claim]
    next_due: dict[int, int | None] = field(default_factory=dict)  # by partition
    full: set[int] = field(default_factory=set)  # partitions that may have more due now


class InFlightLimit(Exception):
    """The tenant has max_jobs_in_flight jobs queued or running: nothing was written."""

    def __init__(self, in_flight: int) -> None:
        super().__init__(f"{in_flight} jobs in flight")
        self.in_flight = in_flight


@dataclass(frozen=True)
class Created:
    created: bool
    job_id: str
    token: str
    now_ms: int
    body_sha256: str


@dataclass(frozen=True)
class Backlog:
    due_now: int
    deliveries_due_now: int
    deliveries_scheduled: int
    failed_deliveries: int


@dataclass(frozen=True, slots=True)
class Keep:
    """The job stays where it is in the schedule it was claimed from."""


@dataclass(frozen=True, slots=True)
class Remove:
    """The job leaves the schedule it was claimed from."""


@dataclass(frozen=True, slots=True)
class After:
    """The job is due again in the schedule it was claimed from after `ms`."""

    ms: int


Source = Keep | Remove | After


@dataclass
class Commit:
    """What a worker decided about a claimed job; applied atomically if still fenced."""

    fields: JobChange = field(default_factory=JobChange)
    source: Source = Keep()
    target_delay_ms: int | None = None
    completed: bool = False
    result: str | None = None
    attempt: str | None = None
    expire_ms: int | None = None
    due_field: str = ""
    failed_delivery: bool = False
    counters: dict[str, int] = field(default_factory=dict)  # added to the partition's counters
    held: bool = False  # with After: the committer keeps the lease until then (a local timer)

    def options(
        self, job_id: str, token: str, commit_id: str, publish: list[str] | None = None
    ) -> bytes:
        """commit.lua's options argument; an absent option does nothing."""
        o = {
            "id": job_id,
            "token": token,
            "commit": commit_id,
            "remove": isinstance(self.source, Remove),
            "after_ms": self.source.ms if isinstance(self.source, After) else None,
            "target_ms": self.target_delay_ms,
            "due_field": self.due_field,
            "completed": self.completed,
            "result": self.result,
            "attempt": self.attempt,
            "failed_delivery": self.failed_delivery,
            "counters": self.counters,
            "expire_ms": self.expire_ms,
            "held": self.held,
            "publish": publish,
        }
        return orjson.dumps({k: v for k, v in o.items() if _present(v)})


def _present(value: Any) -> bool:
    """An option that does something (0 ms does: due now)."""
    return value is not None and value is not False and value != "" and value != {}


def _job(h: dict[str, str]) -> Job | None:
    """A stored hash as a Job; None when absent, or unreadable (logged): a record that
    cannot be parsed is treated as gone rather than stalling every claim with it."""
    if not h:
        return None
    try:
        return Job.from_hash(h)
    except (KeyError, ValueError) as e:
        structlog.get_logger("pushbridge.store").error(
            "unreadable job record", job_id=h.get("id"), error=f"{type(e).__name__}: {e}"
        )
        return None


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _flatten(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in fields.items():
        out += [k, "" if v is None else v]
    return out


DEFAULT_ACK = ReplicaAck()  # wait for the replicas a node has (none: no wait)
CREATE_WAIT_S = 2.0  # how long an API request waits for a job's creation before a 503


class Store:
    """All store access. `redis` is a redis.asyncio client (or cluster client)."""

    def __init__(
        self,
        redis: StoreClient,
        prefix: str = "pushbridge",
        partitions: int = 16,
        retry_s: float = RETRY_S,
        replica_ack: ReplicaAck = DEFAULT_ACK,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix, partitions)
        self.round_trips: Counter[str] = Counter()  # network round trips by operation
        self.retry_s = retry_s
        self.create_wait_s = CREATE_WAIT_S
        self._retry = Retry(
            ExponentialBackoff(cap=1.0, base=0.05),
            retries=-1,  # until retry_s has passed (see _retrying)
            supported_errors=(StoreConnectionError, StoreTimeoutError),
        )
        self._id = secrets.token_hex(6)  # names this process's claims and commits
        self._seq = itertools.count()
        self._unanswered_claims: dict[str, str] = {}  # schedule -> id of a failed claim
        # on a cluster, one pipeline per master; acked: replicas have the write before we answer
        self.scripts = Scripts(redis, replica_ack, self.round_trips)
        self._create = self.scripts.load("create", "_lists", acked=True)
        self._claim = self.scripts.load("claim")
        self._commit = self.scripts.load("commit", "_lists", acked=True)
        self._release = self.scripts.load("release")
        self._cancel = self.scripts.load("cancel", "_lists", acked=True)
        self._redeliver = self.scripts.load("redeliver", "_lists", acked=True)
        self._stats = self.scripts.load("stats")
        self.lists = JobLists(
            redis, self.scripts, self.keys, self.run_scripts, self.round_trips, _job
        )
        self._poke = self.scripts.load("poke")
        self.publish = publish_command(isinstance(redis, RedisCluster))
        # job creation and commits made in one loop iteration share a round trip (one per
        # master on a cluster)
        self._auto = AutoPipeline(self._auto_send, shard=self.scripts.shard)

    @property
    def partitions(self) -> int:
        return self.keys.partitions

    async def ping(self) -> bool:
        self.round_trips["ping"] += 1
        return bool(await self.redis.ping())

    async def create_job(
        self,
        tenant: str,
        fields: dict[str, Any],
        lease_ms: int,
        body_sha256: str,
        idempotency_key: str | None = None,
        idem_ttl_ms: int = 0,
        max_in_flight: int | None = None,
    ) -> Created:
        """Store and list a new job, claimed for lease_ms. With max_in_flight, refused
        (InFlightLimit) when the tenant has that many jobs queued or running: one more
        round trip reads its count in the other partitions, and the script checks the rest:
        creates that race each other through different partitions may pass together, by
        at most one job each."""
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
            partition = int(digest[:8], 16) % self.partitions
            idem_key = self.keys.idem(partition, digest)
        else:
            digest, idem_key = "", None
            partition = secrets.randbelow(self.partitions)
        job_id = new_job_id(partition)
        idem_value = f"{job_id}|{body_sha256}" if idem_key else ""
        cap, others = "", 0
        if max_in_flight is not None:
            counts = await self.lists.in_flight(tenant)
            others = sum(counts) - counts[partition]
            cap = str(max_in_flight - others)
        keys = [
            self.keys.job(job_id),
            self.keys.schedule("due", partition),
            self.keys.fence(partition),
            idem_key or self.keys.idem(partition, "-"),
        ]
        args = [
            job_id,
            lease_ms,
            idem_value,
            idem_ttl_ms,
            tenant,
            cap,
            *_flatten({"id": job_id, **fields}),
        ]
        try:  # retried on fresh connections, but a client waits only create_wait_s
            async with asyncio.timeout(self.create_wait_s):
                created, value, now_ms = await self._auto.call(self._create, keys, args)
        except TimeoutError:
            raise StoreConnectionError(
                f"the store did not take the write within {self.create_wait_s} s"
            ) from None
        if created == 2:
            raise InFlightLimit(others + int(value))
        if not created:
            prev_id, prev_sha = value.split("|", 1)
            return Created(False, prev_id, "", int(now_ms), prev_sha)
        return Created(True, job_id, str(value), int(now_ms), body_sha256)

    async def claim(
        self, which: Schedule, lease_ms: int, limit: int, partitions: list[int] | None = None
    ) -> ClaimBatch:
        """Claim due members of the given partitions (default all) in one pipelined round trip.

        Not retried here (the claim loop backs off and claims again); a claim that
        failed on the way back is repeated by the next one, which hands out what the
        failed one took."""
        self.round_trips["claim"] += 1
        parts = list(range(self.partitions)) if partitions is None else partitions
        per_partition = max(1, -(-limit // len(parts))) if limit > 0 and parts else 0
        with_result = "1" if which == "deliver" else ""
        # a claim whose reply was lost is sent again by the next claim, with its id
        claim_id = self._unanswered_claims.pop(which, None) or self._new_id()
        claimer = f"{self._id}:{which}"
        calls = [
            (
                self._claim,
                [self.keys.schedule(which, p), self.keys.fence(p), self.keys.claims(p, claimer)],
                [
                    lease_ms,
                    per_partition,
                    f"{self.keys.tag(p)}:",
                    with_result,
                    claim_id,
                    "1" if which == "due" else "",
                ],
            )
            for p in parts
        ]
        try:
            replies = await self.run_scripts(calls)
        except (StoreConnectionError, StoreTimeoutError):
            self._unanswered_claims[which] = claim_id
            raise
        batch = ClaimBatch(0, None, [])
        for p, (now, nxt, flat) in zip(parts, replies, strict=True):
            batch.now_ms = max(batch.now_ms, int(now))
            batch.claims += [
                Claim(
                    flat[i],
                    str(flat[i + 1]),
                    int(float(flat[i + 2])),
                    _job(_pairs(flat[i + 3])),
                    flat[i + 4] or None,
                )
                for i in range(0, len(flat), 5)
            ]
            batch.next_due[p] = None if int(nxt) < 0 else int(nxt)
            if per_partition and len(flat) // 5 >= per_partition:
                batch.full.add(p)
        due = [d for d in batch.next_due.values() if d is not None]
        batch.next_due_ms = min(due) if due else None
        return batch

    def _new_id(self) -> str:
        """Unique per call: a retried call carries the same id as its first run."""
        return f"{self._id}.{next(self._seq)}"

    async def _retrying(self, call: Callable[[], Awaitable[T]], retry_s: float | None = None) -> T:
        """`call()`, again on a fresh connection after a connection error or a timeout
        (exponential backoff, 0.1 s to 1 s) until `retry_s` (default self.retry_s) passed.
        Only for calls that are safe to run twice."""
        give_up_at = time.monotonic() + (self.retry_s if retry_s is None else retry_s)

        async def failed(error: Exception) -> None:
            await self._drop_idle_connections()  # opened before a restart: closed by now
            if time.monotonic() >= give_up_at:
                raise error
            self.round_trips["retry"] += 1

        return await self._retry.call_with_retry(call, failed)

    async def _drop_idle_connections(self) -> None:
        pool = getattr(self.redis, "connection_pool", None)  # a cluster client has none
        if pool is not None:
            await pool.disconnect(inuse_connections=False)

    async def run_scripts(self, calls: list[Call]) -> list[Any]:
        """Script calls in one pipeline; raises the first call's error, if any."""
        replies = await self.scripts.run(calls)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _auto_send(self, calls: list[Call]) -> list[Any]:
        self.round_trips["pipelined"] += 1
        return await self._retrying(lambda: self.scripts.run(calls))

    async def get_job(self, job_id: str) -> Job | None:
        self.round_trips["read"] += 1
        return _job(text_hash(await self.redis.hgetall(self.keys.job(job_id))))

    async def get_job_and_result(self, job_id: str) -> tuple[Job | None, str | None]:
        self.round_trips["read"] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.get(self.keys.result(job_id))
            job, result = await pipe.execute()
        return _job(text_hash(job)), text_or_none(result)

    async def get_result(self, job_id: str) -> str | None:
        self.round_trips["read"] += 1
        return text_or_none(await self.redis.get(self.keys.result(job_id)))

    async def get_attempts(self, job_id: str) -> list[str]:
        self.round_trips["read"] += 1
        return texts(await self.redis.lrange(self.keys.attempts(job_id), 0, -1))

    async def commit(self, which: Schedule, job_id: str, token: str, c: Commit) -> int | None:
        """Apply `c` if `token` is current: the store time (ms) it was applied at, else None."""
        p = self.keys.partition_of(job_id)
        other: Schedule = "deliver" if which == "due" else "due"
        keys = [
            self.keys.job(job_id),
            self.keys.fence(p),
            self.keys.schedule(which, p),
            self.keys.schedule(other, p),
            self.keys.result(job_id),
            self.keys.attempts(job_id),
            self.keys.schedule("failed", p),
            self.keys.counters(p),
        ]
        notice = self._notice(job_id, f"done {job_id}") if c.completed else None
        options = c.options(job_id, token, self._new_id(), notice)
        args = [options, *_flatten(wire_fields(c.fields))]
        applied = int(await self._auto.call(self._commit, keys, args))  # retried
        return applied if applied > 0 else None

    def _notice(self, job_id: str, message: str) -> list[str]:
        """A notice on the job's partition channel, for a script to publish (notify.py)."""
        return [self.publish, self.keys.events(self.keys.partition_of(job_id)), message]

    def _release_keys(self, job_id: str) -> list[str]:
        p = self.keys.partition_of(job_id)
        return [self.keys.schedule("due", p), self.keys.schedule("deliver", p), self.keys.fence(p)]

    async def release_many(self, claims: list[tuple[str, str]], retry_s: float = 0.0) -> int:
        """Give back many claims (job id, token) in one round trip, each due now in whichever
        schedule holds its job; retried for retry_s. The number whose token was current."""
        if not claims:
            return 0
        self.round_trips["release"] += 1
        calls: list[Call] = [
            (self._release, self._release_keys(job_id), [job_id, token]) for job_id, token in claims
        ]
        replies = await self._retrying(lambda: self.run_scripts(calls), retry_s)
        return sum(reply == 1 for reply in replies)

    def _job_keys(self, job_id: str, which: Schedule) -> list[str]:
        p = self.keys.partition_of(job_id)
        return [
            self.keys.job(job_id),
            self.keys.schedule(which, p),
            self.keys.fence(p),
            self.keys.result(job_id),
            self.keys.attempts(job_id),
        ]

    async def cancel(self, job_id: str, tenant: str, expire_ms: int) -> str:
        self.round_trips["cancel"] += 1
        keys = self._job_keys(job_id, "due")
        channel = self.keys.events(self.keys.partition_of(job_id))
        args = [job_id, tenant, expire_ms, self.publish, channel]
        return text(await self.scripts.call(self._cancel, keys, args))

    async def poke(self, job_id: str) -> str:
        """A verified push for the job: due now unless a claim holds it, and a notice to
        every process (poke.lua). Its status, or 'missing'. Safe to run twice."""
        p = self.keys.partition_of(job_id)
        keys = [self.keys.job(job_id), self.keys.schedule("due", p)]
        args = [job_id, self.publish, self.keys.events(p)]
        self.round_trips["poke"] += 1
        return text(await self._retrying(lambda: self.scripts.call(self._poke, keys, args), 2.0))

    async def redeliver(self, job_id: str, tenant: str) -> str:
        self.round_trips["redeliver"] += 1
        keys = [
            *self._job_keys(job_id, "deliver"),
            self.keys.schedule("failed", self.keys.partition_of(job_id)),
        ]
        return text(await self.scripts.call(self._redeliver, keys, [job_id, tenant]))

    async def ensure_layout(self) -> None:
        """Check that the store is laid out as this process expects (partitions, layout
        version); on a new store, write the layout. A mismatch would hide stored jobs
        (their keys are found through their partition), so it is refused at start."""
        want = {"version": LAYOUT_VERSION, "partitions": self.partitions}
        stored = text_or_none(await self.redis.get(self.keys.layout()))
        if stored is None:
            await self._refuse_partitions_in_use()  # a store older than the layout key
            written = json.dumps(want)
            # SET NX GET: the value already there, or None when ours was written
            earlier = await self.redis.set(self.keys.layout(), written, nx=True, get=True)
            stored = text_or_none(earlier) or written
        layout = json.loads(stored)
        if layout.get("version") != LAYOUT_VERSION:
            raise StoreLayoutError(
                f"the store at key prefix {self.keys.prefix!r} has layout version "
                f"{layout.get('version')}; this pushbridge reads version {LAYOUT_VERSION}"
            )
        if layout.get("partitions") != self.partitions:
            raise StoreLayoutError(
                f"store.partitions: {self.partitions} configured, but the store at key prefix "
                f"{self.keys.prefix!r} holds jobs laid out in {layout.get('partitions')} "
                "partitions, which would not be found; set store.partitions to "
                f"{layout.get('partitions')} (or use a new store.key_prefix)"
            )

    async def _refuse_partitions_in_use(self) -> None:
        """A store without a layout key: refuse it if it has work in partitions beyond ours."""
        beyond = range(self.partitions, MAX_PARTITIONS)
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in beyond:
                pipe.exists(self.keys.schedule("due", p), self.keys.schedule("deliver", p))
            found = await pipe.execute()
        used = [p for p, n in zip(beyond, found, strict=True) if n]
        if used:
            raise StoreLayoutError(
                f"store.partitions: {self.partitions} configured, but the store at key prefix "
                f"{self.keys.prefix!r} holds jobs in partition {used[-1]}, which would not be "
                f"found; set store.partitions to the number it was created with (at least "
                f"{used[-1] + 1})"
            )

    async def url_key(self) -> bytes:
        """The shared key that signs result_url links (created once, shared by replicas)."""
        key = self.keys.url_key()
        await self.redis.set(key, secrets.token_hex(32), nx=True)
        value = text(await self.redis.get(key))
        return bytes.fromhex(value)

    async def push_key(self) -> bytes:
        """The shared key that signs per-job push URLs (created once, shared by replicas)."""
        key = self.keys.push_key()
        await self.redis.set(key, secrets.token_hex(32), nx=True)
        return bytes.fromhex(text(await self.redis.get(key)))

    async def duration_counts(self) -> dict[str, int]:
        """The duration histograms of all partitions, added up: "<upstream>:<bucket>" -> n."""
        self.round_trips["durations"] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.hgetall(self.keys.counters(p))
            replies = await pipe.execute()
        total: Counter[str] = Counter()
        for reply in replies:
            total.update({k: int(v) for k, v in reply.items()})
        return dict(total)

    async def list_jobs(self, tenant: str, query: ListQuery) -> ListPage:
        """A page of the tenant's jobs, newest first (lists.py)."""
        return await self.lists.page(tenant, query)

    async def backlog(self, retention_ms: int) -> Backlog:
        """Due work, scheduled deliveries and failed deliveries over all partitions."""
        self.round_trips["backlog"] += 1
        calls = [
            (
                self._stats,
                [self.keys.schedule(w, p) for w in ("due", "deliver", "failed")],
                [retention_ms],
            )
            for p in range(self.partitions)
        ]
        replies = await self.run_scripts(calls)
        return Backlog(*(sum(int(r[i]) for r in replies) for i in range(4)))
