"""Key names, job ids and partitions.

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
    <prefix>:{p7}:durations       hash   counters commits add to: the learned duration
                                         histogram, "<upstream>:s<lo>-<hi>" -> completed jobs
    <prefix>:{p7}:claims:<claimer> string the claimer's last claim (its retry after a lost reply)
    <prefix>:{p7}:list:<tenant>:s:<status>  zset  the tenant's jobs of that status, and
    <prefix>:{p7}:list:<tenant>:d:<state>   zset  of that delivery state: members
                                         "<created_at, 13 digits>:<id>", score 0 (lists.py)
    <prefix>:{p7}:tenants         set    tenants that have lists in the partition
    <prefix>:{p7}:inflight        hash   tenant -> its queued and running jobs
    <prefix>:{p7}:list-sweep      hash   where the sweep of expired list members stopped
    <prefix>:{p7}:events          channel notices of the partition's jobs (store/notify.py)
    <prefix>:url-key              string key that signs result_url links
    <prefix>:push-key             string key that signs per-job push URLs
    <prefix>:layout               string {"version": 1, "partitions": N}, written at first start
"""

from __future__ import annotations

import re
import secrets
from typing import Literal

JOB_ID_RE = re.compile(r"^job_[0-9a-f]{3}[0-9a-f]{24}$")
MAX_PARTITIONS = 4096  # job ids have three hex digits for their partition
Schedule = Literal["due", "deliver"]
Index = Literal["due", "deliver", "failed"]


class Keys:
    """Key names. Every key of a partition carries its hash tag `{p<n>}` (see tag()), so
    all of them live in one Redis Cluster slot. Scripts rely on this: claim.lua reads the
    job and result keys of the ids it claims, which it builds from the partition prefix
    instead of receiving them in KEYS; that is sound only because they share the slot
    of the KEYS it was given. Keep every key of a partition under tag(partition)."""

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

    def counters(self, partition: int) -> str:
        """Counters commits add to (named for the only ones so far: learned durations)."""
        return f"{self.tag(partition)}:durations"

    def claims(self, partition: int, claimer: str) -> str:
        return f"{self.tag(partition)}:claims:{claimer}"

    def job_list(self, partition: int, tenant: str, kind: Literal["s", "d"], state: str) -> str:
        """A tenant's jobs of one status ("s") or delivery state ("d") in a partition."""
        return f"{self.tag(partition)}:list:{tenant}:{kind}:{state}"

    def tenants(self, partition: int) -> str:
        return f"{self.tag(partition)}:tenants"

    def in_flight(self, partition: int) -> str:
        return f"{self.tag(partition)}:inflight"

    def list_sweep(self, partition: int) -> str:
        return f"{self.tag(partition)}:list-sweep"

    def events(self, partition: int) -> str:
        """The partition's pub/sub channel (a shard channel on a cluster: its hash tag puts
        it in the partition's slot, so a script of the partition can publish to it)."""
        return f"{self.tag(partition)}:events"

    def url_key(self) -> str:
        return f"{self.prefix}:url-key"

    def push_key(self) -> str:
        return f"{self.prefix}:push-key"

    def layout(self) -> str:
        return f"{self.prefix}:layout"


def new_job_id(partition: int) -> str:
    return f"job_{partition:03x}{secrets.token_hex(12)}"


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID_RE.match(job_id))
