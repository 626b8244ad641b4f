"""The Redis store: key names, Lua scripts and every round trip in one place.

Layout (all keys of one partition share the hash tag `{p<n>}`, so each script
touches one Redis Cluster slot; job ids embed their partition):

    <prefix>:{p7}:job:<id>        hash   the job
    <prefix>:{p7}:result:<id>     string the upstream result (JSON)
    <prefix>:{p7}:attempts:<id>   list   delivery attempt records (JSON)
    <prefix>:{p7}:idem:<sha256>   string "<job id>|<body sha256>"
    <prefix>:{p7}:due             zset   submit/poll work, score = due time (ms, Redis TIME)
    <prefix>:{p7}:deliver         zset   callback deliveries, score = due time
    <prefix>:{p7}:fence           hash   job id -> fencing token of the current claim
    <prefix>:{p7}:failed          zset   jobs whose delivery failed for good (score = when)
    <prefix>:{p7}:durations       hash   "<upstream>:s<lo>-<hi>" -> completed jobs (learned polling)
    <prefix>:url-key              string key that signs result_url links

A sorted set is both schedule and lease: claiming re-scores a member to
now + lease, so a claimer that dies simply lets it become due again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from bridge.autopipe import AutoPipeline, Call
from bridge.model import Job, JobChange, wire_fields

JOB_ID_RE = re.compile(r"^job_[0-9a-f]{3}[0-9a-f]{24}$")
Schedule = Literal["due", "deliver"]
Index = Literal["due", "deliver", "failed"]


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: str
    due_ms: int = 0
    job: Job | None = None  # None if the job is gone
    result: str | None = None  # with the deliver schedule


@dataclass
class ClaimBatch:
    now_ms: int
    next_due_ms: int | None
    claims: list[Claim]
    next_due: dict[int, int | None] = field(default_factory=dict)  # by partition
    full: set[int] = field(default_factory=set)  # partitions that may have more due now


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


@dataclass
class Commit:
    """What a worker decided about a claimed job; applied atomically if still fenced."""

    fields: JobChange = field(default_factory=JobChange)
    source: str = "keep"  # 'keep' | 'rm' | delay in ms
    target_delay_ms: int | None = None
    completed: bool = False
    result: str | None = None
    attempt: str | None = None
    expire_ms: int | None = None
    due_field: str = ""
    failed_delivery: bool = False
    duration_field: str = ""  # "<upstream>:<low>-<high bucket>" counted in the histogram


def _lua(name: str) -> str:
    return resources.files("bridge").joinpath(f"lua/{name}.lua").read_text()


class Keys:
    def __init__(self, prefix: str, partitions: int) -> None:
        self.prefix = prefix
        self.partitions = partitions

    def tag(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    def partition_of(self, job_id: str) -> int:
        return int(job_id[4:7], 16) % self.partitions

    def job(self, job_id: str) -> str:
        return f"{self.tag(self.partition_of(job_id))}:job:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.tag(self.partition_of(job_id))}:result:{job_id}"

    def attempts(self, job_id: str) -> str:
        return f"{self.tag(self.partition_of(job_id))}:attempts:{job_id}"

    def schedule(self, which: Index, partition: int) -> str:
        return f"{self.tag(partition)}:{which}"

    def fence(self, partition: int) -> str:
        return f"{self.tag(partition)}:fence"

    def idem(self, partition: int, digest: str) -> str:
        return f"{self.tag(partition)}:idem:{digest}"

    def durations(self, partition: int) -> str:
        return f"{self.tag(partition)}:durations"

    def url_key(self) -> str:
        return f"{self.prefix}:url-key"


def new_job_id(partition: int) -> str:
    return f"job_{partition:03x}{secrets.token_hex(12)}"


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _job(h: dict[str, str]) -> Job | None:
    return Job.from_hash(h) if h else None


def _flatten(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in fields.items():
        out += [k, "" if v is None else v]
    return out


class Store:
    """All store access. `redis` is a redis.asyncio client (or cluster client)."""

    def __init__(self, redis: Redis, prefix: str = "pushbridge", partitions: int = 16) -> None:
        self.redis = redis
        self.keys = Keys(prefix, partitions)
        self.round_trips: Counter[str] = Counter()  # network round trips by operation
        # job creation and commits made in one loop iteration share a round trip
        self._auto = AutoPipeline(self._auto_send)
        self._create = redis.register_script(_lua("create"))
        self._claim = redis.register_script(_lua("claim"))
        self._commit = redis.register_script(_lua("commit"))
        self._release = redis.register_script(_lua("release"))
        self._cancel = redis.register_script(_lua("cancel"))
        self._redeliver = redis.register_script(_lua("redeliver"))
        self._stats = redis.register_script(_lua("stats"))
        self._scripts = [
            self._create,
            self._claim,
            self._commit,
            self._release,
            self._cancel,
            self._redeliver,
            self._stats,
        ]

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
    ) -> Created:
        if idempotency_key is not None:
            digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()
            partition = int(digest[:8], 16) % self.partitions
            idem_key = self.keys.idem(partition, digest)
        else:
            digest, idem_key = "", None
            partition = secrets.randbelow(self.partitions)
        job_id = new_job_id(partition)
        idem_value = f"{job_id}|{body_sha256}" if idem_key else ""
        keys = [
            self.keys.job(job_id),
            self.keys.schedule("due", partition),
            self.keys.fence(partition),
            idem_key or self.keys.idem(partition, "-"),
        ]
        args = [job_id, lease_ms, idem_value, idem_ttl_ms, *_flatten({"id": job_id, **fields})]
        created, value, now_ms = await self._auto.call(self._create, keys, args)
        if not created:
            prev_id, prev_sha = value.split("|", 1)
            return Created(False, prev_id, "", int(now_ms), prev_sha)
        return Created(True, job_id, str(value), int(now_ms), body_sha256)

    async def claim(
        self, which: Schedule, lease_ms: int, limit: int, partitions: list[int] | None = None
    ) -> ClaimBatch:
        """Claim due members of the given partitions (default all) in one pipelined round trip."""
        self.round_trips["claim"] += 1
        parts = list(range(self.partitions)) if partitions is None else partitions
        per_partition = max(1, -(-limit // len(parts))) if limit > 0 and parts else 0
        with_result = "1" if which == "deliver" else ""
        calls = [
            (
                self._claim,
                [self.keys.schedule(which, p), self.keys.fence(p)],
                [lease_ms, per_partition, f"{self.keys.tag(p)}:", with_result],
            )
            for p in parts
        ]
        replies = await self.run_scripts(calls)
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

    async def run_scripts(self, calls: list[Call]) -> list[Any]:
        """EVALSHA calls in one pipeline; raises the first call's error, if any."""
        replies = await self._evalsha_replies(calls)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _evalsha_replies(self, calls: list[Call]) -> list[Any]:
        """EVALSHA calls in one pipeline (no SCRIPT EXISTS round trip), a reply or an
        exception per call; after a store restart (NOSCRIPT) the scripts are loaded and
        the calls sent once more."""
        replies = await self._pipeline_evalsha(calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            for script in self._scripts:
                await self.redis.script_load(script.script)
            replies = await self._pipeline_evalsha(calls)
        return replies

    async def _auto_send(self, calls: list[Call]) -> list[Any]:
        self.round_trips["pipelined"] += 1
        return await self._evalsha_replies(calls)

    async def _pipeline_evalsha(self, calls: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    async def get_job(self, job_id: str) -> Job | None:
        self.round_trips["read"] += 1
        return _job(await self.redis.hgetall(self.keys.job(job_id)))

    async def get_job_and_result(self, job_id: str) -> tuple[Job | None, str | None]:
        self.round_trips["read"] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.get(self.keys.result(job_id))
            job, result = await pipe.execute()
        return _job(job), result

    async def get_result(self, job_id: str) -> str | None:
        self.round_trips["read"] += 1
        return await self.redis.get(self.keys.result(job_id))

    async def get_attempts(self, job_id: str) -> list[str]:
        self.round_trips["read"] += 1
        return await self.redis.lrange(self.keys.attempts(job_id), 0, -1)

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
            self.keys.durations(p),
        ]
        args = [
            job_id,
            token,
            c.source,
            "" if c.target_delay_ms is None else c.target_delay_ms,
            "1" if c.completed else "",
            c.result or "",
            c.attempt or "",
            "" if c.expire_ms is None else c.expire_ms,
            c.due_field,
            "1" if c.failed_delivery else "",
            c.duration_field,
            *_flatten(wire_fields(c.fields)),
        ]
        applied = int(await self._auto.call(self._commit, keys, args))
        return applied if applied > 0 else None

    def _release_keys(self, job_id: str) -> list[str]:
        p = self.keys.partition_of(job_id)
        return [self.keys.schedule("due", p), self.keys.schedule("deliver", p), self.keys.fence(p)]

    async def release(self, job_id: str, token: str) -> bool:
        """Give a claim back: due now in whichever schedule holds the job."""
        self.round_trips["release"] += 1
        return await self._release(keys=self._release_keys(job_id), args=[job_id, token]) == 1

    async def release_many(self, claims: list[tuple[str, str]]) -> None:
        """Give back many claims (job id, token) in one round trip."""
        if not claims:
            return
        self.round_trips["release"] += 1
        await self.run_scripts(
            [
                (self._release, self._release_keys(job_id), [job_id, token])
                for job_id, token in claims
            ]
        )

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
        return await self._cancel(keys=keys, args=[job_id, tenant, expire_ms])

    async def redeliver(self, job_id: str, tenant: str) -> str:
        self.round_trips["redeliver"] += 1
        keys = [
            *self._job_keys(job_id, "deliver"),
            self.keys.schedule("failed", self.keys.partition_of(job_id)),
        ]
        return await self._redeliver(keys=keys, args=[job_id, tenant])

    async def url_key(self) -> bytes:
        """The shared key that signs result_url links (created once, shared by replicas)."""
        key = self.keys.url_key()
        await self.redis.set(key, secrets.token_hex(32), nx=True)
        value = await self.redis.get(key)
        return bytes.fromhex(value)

    async def duration_counts(self) -> dict[str, int]:
        """The duration histograms of all partitions, added up: "<upstream>:<bucket>" -> n."""
        self.round_trips["durations"] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.hgetall(self.keys.durations(p))
            replies = await pipe.execute()
        total: Counter[str] = Counter()
        for reply in replies:
            total.update({k: int(v) for k, v in reply.items()})
        return dict(total)

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
