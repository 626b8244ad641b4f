"""Polling that learns each upstream's duration distribution.

Completed jobs are counted in a log-spaced histogram per upstream (in the store,
shared by replicas). With enough samples, the next poll of a running job goes where
completion has become likely: at the first bucket edge where the chance that the job
finished since the last poll reaches `poll.adaptive_hazard`. A low hazard polls
often (low lag), a high one rarely (few polls). Without enough samples, polling
falls back to the geometric backoff from min_interval_s to max_interval_s.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict

BASE_S = 0.05
GROWTH = 1.15
BUCKETS = 90  # up to 0.05 * 1.15**90 ≈ 14 h
EDGES_S = [BASE_S * GROWTH**i for i in range(BUCKETS + 1)]


def bucket_of(duration_s: float) -> int:
    if duration_s <= BASE_S:
        return 0
    return min(BUCKETS - 1, int(math.log(duration_s / BASE_S, GROWTH)))


class Durations:
    """Learned duration histograms, refreshed from the store."""

    def __init__(self, min_samples: int = 30) -> None:
        self.min_samples = min_samples
        self.counts: dict[str, list[int]] = {}

    def update(self, flat: dict[str, int]) -> None:
        counts: dict[str, list[int]] = defaultdict(lambda: [0] * BUCKETS)
        for key, n in flat.items():
            upstream, _, bucket = key.rpartition(":")
            if bucket.isdigit() and int(bucket) < BUCKETS:
                counts[upstream][int(bucket)] += n
        self.counts = dict(counts)

    def next_poll_s(self, upstream: str, elapsed_s: float, hazard: float) -> float | None:
        """Seconds from now to the next poll of a job running for elapsed_s, or None if
        too little is known about this upstream."""
        counts = self.counts.get(upstream)
        total = sum(counts) if counts else 0
        if not counts or total < self.min_samples:
            return None
        start = bisect_right(EDGES_S, elapsed_s) - 1  # the bucket elapsed_s falls in
        survivors = sum(counts[max(0, start) :])
        if survivors <= 0:  # slower than anything seen yet: back off in proportion
            return max(BASE_S, elapsed_s * (GROWTH**2 - 1))
        finished = 0
        for i in range(max(0, start), BUCKETS):
            finished += counts[i]
            if finished >= hazard * survivors:
                return max(0.0, EDGES_S[i + 1] - elapsed_s)
        return None
