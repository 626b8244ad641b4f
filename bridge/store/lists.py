"""A tenant's jobs, newest first (GET /v1/jobs), and each tenant's jobs in flight.

The job scripts keep the lists (lua/_lists.lua): per partition and tenant, one sorted set
per status and one per delivery state, whose members are "<created_at, 13 digits>:<id>"
with score 0, so each set is ordered by creation, then id. A job is in one status set,
and in one delivery set unless it has no delivery (state `none`: most jobs in flight,
whose memory counts). A change of status or delivery state moves it between sets inside
the script that makes the change (create, commit, cancel, redeliver: no extra round trip).

Pages. A member never changes, so a position in the list is a member: a page holds the
first `limit` jobs below its cursor in the merge of all partitions (one script call per
partition, all in one pipelined round trip, lua/list.lua), and its next cursor is the
member of its last job. So pages never repeat a job, nor skip one that existed when the
listing began, whatever is created, finished or expired meanwhile: a new job sorts above
the first page (created_at is the store's clock), and a job keeps its place when its state
changes. A job that expired between two pages is simply not there.

Filters. `status` and `delivery` read their own sets, so `delivery=failed` costs the
same among 100,000 jobs as among 10. With both, each partition reads the smaller group of
sets and checks the other filter on the job, as it checks `upstream`; that work is
bounded: one request examines at most MAX_EXAMINED members in at most MAX_ROUNDS round
trips, and when it stops there, its page may hold fewer than `limit` jobs but has a next
cursor to go on from.

Expired jobs leave the lists lazily (a page that meets one removes it) and by the sweep
(lua/listsweep.lua), run by the workers every few seconds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.model import DeliveryState, Job, JobStatus
from bridge.store.client import StoreClient
from bridge.store.keys import Keys
from bridge.store.scripts import Call, Scripts

MAX_LIMIT = 200
MAX_EXAMINED = 4000  # list members one request examines at most (filters that need checking)
MAX_ROUNDS = 6  # round trips one request makes at most
SWEEP_BUDGET = 500  # list members one sweep examines per partition (about 2 ms of the store)
CURSOR_PATTERN = "^[0-9]{13}[0-9a-f]{27}$"  # created_at (13 digits), the job id's hex digits
CURSOR_RE = re.compile(r"([0-9]{13})([0-9a-f]{27})")
# what a listed job shows (the job object, without its inputs or result)
LIST_FIELDS = (
    "id",
    "tenant",
    "upstream",
    "status",
    "callback_url",
    "metadata",
    "deadline_ms",
    "created_at",
    "updated_at",
    "completed_at",
    "upstream_ref",
    "poll_url",
    "upstream_id",
    "error",
    "result_size",
    "delivery_state",
    "delivery_attempts",
    "max_attempts",
    "next_attempt_at",
    "last_attempt_at",
    "last_status_code",
)
STATUSES = tuple(s.value for s in JobStatus)
STATES = tuple(s.value for s in DeliveryState)


def encode_cursor(member: str) -> str:
    """A list member as a cursor: its 13 digits of created_at, then the id's 27 hex digits
    (any such string is a position in the list)."""
    return member.replace(":job_", "", 1)


def decode_cursor(cursor: str) -> str | None:
    """The list member a cursor names; None if it is not a cursor."""
    m = CURSOR_RE.fullmatch(cursor)
    return f"{m.group(1)}:job_{m.group(2)}" if m else None


@dataclass(frozen=True)
class ListQuery:
    limit: int = 50
    statuses: tuple[JobStatus, ...] = ()  # any of these (none: any status)
    states: tuple[DeliveryState, ...] = ()  # any of these delivery states
    upstream: str | None = None
    below: str | None = None  # the list member the page starts after (from its cursor)


@dataclass
class ListPage:
    jobs: list[Job]
    next_member: str | None  # the next page starts after it; None: this was the last page
    examined: int = 0  # list members looked at
    rounds: int = 0  # round trips


@dataclass
class _Partition:
    position: str  # the last member examined ("" = none yet)
    done: bool = False  # nothing below position


@dataclass
class _Merge:
    """The partitions' answers so far: every member at or above `frontier` has been
    examined in every partition, so the matches there are final and in order."""

    parts: dict[int, _Partition]
    found: list[tuple[str, list[Any]]] = field(default_factory=list)
    examined: int = 0

    @property
    def frontier(self) -> str | None:
        """None when every partition is done."""
        return max((p.position for p in self.parts.values() if not p.done), default=None)

    def ready(self) -> list[tuple[str, list[Any]]]:
        frontier = self.frontier
        final = [m for m in self.found if frontier is None or m[0] >= frontier]
        return sorted(final, key=lambda m: m[0], reverse=True)


def share(limit: int, partitions: int) -> int:
    """Matches to ask of each partition first: about twice its share of the page (the
    members of a page are spread over partitions at random)."""
    return min(limit, -(-limit // partitions) * 2 + 2)


class JobLists:
    def __init__(
        self,
        redis: StoreClient,
        scripts: Scripts,
        keys: Keys,
        run: Callable[[list[Call]], Awaitable[list[Any]]],
        round_trips: Counter[str],
        parse: Callable[[dict[str, str]], Job | None],
    ) -> None:
        self.redis = redis
        self.keys = keys
        self._run = run
        self._list = scripts.load("list", "_lists")
        self._sweep = scripts.load("listsweep", "_lists")
        self.round_trips = round_trips
        self._parse = parse

    def _call(
        self, tenant: str, partition: int, q: ListQuery, at: _Partition, want: int, scan: int
    ) -> Call:
        statuses = [s.value for s in q.statuses] or list(STATUSES)
        keys = [self.keys.job_list(partition, tenant, "s", s) for s in statuses]
        if DeliveryState.NONE not in q.states:  # jobs without a delivery have no set
            keys += [self.keys.job_list(partition, tenant, "d", s.value) for s in q.states]
        args = [
            len(statuses),
            at.position,
            want,
            scan,
            " ".join(s.value for s in q.statuses),
            " ".join(s.value for s in q.states),
            q.upstream or "",
            tenant,
            *LIST_FIELDS,
        ]
        return self._list, keys, args

    async def page(self, tenant: str, q: ListQuery) -> ListPage:
        """The first q.limit jobs of the tenant below q.below that match q's filters."""
        n = self.keys.partitions
        merge = _Merge({p: _Partition(q.below or "") for p in range(n)})
        want, rounds = share(q.limit, n), 0
        while True:
            active = [p for p, part in merge.parts.items() if not part.done]
            scan = max(want, (MAX_EXAMINED - merge.examined) // max(1, len(active)))
            calls = [self._call(tenant, p, q, merge.parts[p], want, scan) for p in active]
            self.round_trips["list"] += 1
            rounds += 1
            for p, reply in zip(active, await self._run(calls), strict=True):
                done, position, examined, *found = reply
                merge.parts[p] = _Partition(position or merge.parts[p].position, done == 1)
                merge.examined += int(examined)
                merge.found += [(m, values) for m, values in found]
            if (
                len(merge.ready()) >= q.limit
                or merge.frontier is None
                or merge.examined >= MAX_EXAMINED
                or rounds >= MAX_ROUNDS
            ):
                return self._page(merge, q.limit, rounds)
            want *= 2

    def _page(self, merge: _Merge, limit: int, rounds: int) -> ListPage:
        ready = merge.ready()
        shown = ready[:limit]
        more = len(ready) > limit or merge.frontier is not None
        if not more:
            next_member = None
        elif len(shown) == limit:
            next_member = shown[-1][0]
        else:  # stopped early (the work bound): go on below what was examined
            next_member = merge.frontier
        jobs = [self._parse(_hash(values)) for _, values in shown]
        return ListPage([j for j in jobs if j is not None], next_member, merge.examined, rounds)

    async def in_flight(self, tenant: str) -> list[int]:
        """The tenant's queued and running jobs, per partition (one round trip)."""
        self.round_trips["in-flight"] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.keys.partitions):
                pipe.hget(self.keys.in_flight(p), tenant)
            counts = await pipe.execute()
        return [int(c or 0) for c in counts]

    async def in_flight_by_tenant(self) -> dict[str, int]:
        """Every tenant's queued and running jobs (one round trip)."""
        self.round_trips["in-flight"] += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.keys.partitions):
                pipe.hgetall(self.keys.in_flight(p))
            replies = await pipe.execute()
        total: Counter[str] = Counter()
        for reply in replies:
            total.update({tenant: int(n) for tenant, n in reply.items()})
        return dict(total)

    async def sweep(self, retention_ms: int, budget: int = SWEEP_BUDGET) -> tuple[int, int]:
        """Remove the members of expired jobs from every partition's lists: (examined,
        removed)."""
        self.round_trips["list-sweep"] += 1
        calls: list[Call] = [
            (self._sweep, [self.keys.tenants(p), self.keys.list_sweep(p)], [retention_ms, budget])
            for p in range(self.keys.partitions)
        ]
        replies = await self._run(calls)
        return sum(int(r[0]) for r in replies), sum(int(r[1]) for r in replies)


def _hash(values: list[Any]) -> dict[str, str]:
    return {f: v for f, v in zip(LIST_FIELDS, values, strict=True) if v is not None}
