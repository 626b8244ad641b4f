"""Polling that learns each upstream's duration distribution.

A job's duration is only known to lie between the last poll that saw it running and
the poll that saw it completed. Each completed job adds one such interval, as a pair
of buckets of a log-spaced histogram, to a per-upstream count in the store (shared by
replicas). The distribution is estimated from these interval-censored counts by
Turnbull's self-consistency (EM) algorithm, which is unbiased however coarse the
polls were: neither the lower nor the upper end of each interval is (a lower-bound
estimate makes every poll early, an upper-bound one every poll late, and each feeds
back on itself through the next polls).

With enough samples, the next poll of a running job goes where completion has
become likely: at the first bucket edge where the chance that the job finished since
the last poll reaches `poll.adaptive_hazard`. A low hazard polls often (low lag), a
high one rarely (few polls). Without enough samples, polling falls back to the
geometric backoff from min_interval_s to max_interval_s.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict

BASE_S = 0.05
GROWTH = 1.15
BUCKETS = 90  # up to 0.05 * 1.15**90 ≈ 14 h
EDGES_S = [BASE_S * GROWTH**i for i in range(BUCKETS + 1)]


def bucket_of(duration_s: float, per_bucket: int = 1) -> int:
    """The bucket of a duration; with per_bucket > 1, its sub-bucket of that many per
    bucket (interval ends are recorded at sub-bucket resolution)."""
    if duration_s <= BASE_S:
        return 0
    index = int(math.log(duration_s / BASE_S, GROWTH) * per_bucket)
    return min(BUCKETS * per_bucket - 1, index)


SUB = 8  # sub-buckets per bucket for interval ends: about 1.8 % of a duration
LAST_SUB = BUCKETS * SUB - 1  # a span ending here is open: the job was still running


def interval_field(upstream: str, low_s: float, high_s: float) -> str:
    """The histogram field of a job known to have finished in (low_s, high_s]: its ends
    as sub-buckets (SUB per bucket)."""
    return f"{upstream}:s{bucket_of(low_s, SUB)}-{_last_sub_bucket(high_s)}"


def running_field(upstream: str, seen_running_s: float) -> str:
    """The histogram field of a job still running after seen_running_s (right-censored:
    it finishes somewhere after that). Without these, an estimate made while long jobs
    are still running sees only the short ones that already finished."""
    return f"{upstream}:s{bucket_of(seen_running_s, SUB)}-{LAST_SUB}"


def _last_sub_bucket(high_s: float) -> int:
    """The last sub-bucket a duration of at most high_s can fall in: a poll that lands
    exactly on a sub-bucket edge says nothing about the sub-bucket that starts there."""
    if high_s <= BASE_S:
        return 0
    x = math.log(high_s / BASE_S, GROWTH) * SUB
    return min(LAST_SUB, max(0, math.ceil(x - 1e-6) - 1))


Span = tuple[int, int]  # (first, last) sub-bucket, inclusive


def _parse_span(field: str) -> Span | None:
    """Sub-bucket span of a field: "s<lo>-<hi>", or "<bucket>" (an exact duration)."""
    if field.isdigit():
        span = (int(field) * SUB, int(field) * SUB + SUB - 1)
    else:
        low, dash, high = field.removeprefix("s").partition("-")
        if not (field.startswith("s") and dash and low.isdigit() and high.isdigit()):
            return None
        span = (int(low), int(high))
    return span if span[0] <= span[1] <= LAST_SUB else None


def _running(span: Span) -> bool:
    return span[1] == LAST_SUB


def _overlaps(span: Span) -> list[tuple[int, float]]:
    """(bucket, share of that bucket's width the span covers) for the buckets it touches."""
    lo, hi = span
    out = []
    for b in range(lo // SUB, hi // SUB + 1):
        covered = min(hi + 1, (b + 1) * SUB) - max(lo, b * SUB)
        out.append((b, covered / SUB))
    return out


def estimate(spans: dict[Span, int], iterations: int = 40) -> list[float]:
    """Turnbull's self-consistency algorithm: the expected number of jobs per bucket,
    given how many jobs finished within each span; the density is taken as uniform
    within a bucket, so a span covering part of a bucket takes that part of its mass."""
    parts = [(_overlaps(span), n) for span, n in spans.items()]
    mass = [0.0] * BUCKETS
    for (span, n), (overlaps, _) in zip(spans.items(), parts, strict=True):
        if not _running(span):  # start: each finished job spread over its span
            width = sum(share for _, share in overlaps)
            for b, share in overlaps:
                mass[b] += n * share / width
    for (lo, hi), n in spans.items():  # a job running longer than any finished one:
        if _running((lo, hi)) and sum(mass[lo // SUB :]) <= 0:  # it may finish any
            mass[lo // SUB] += n  # moment (never "in 14 hours")
    for _ in range(iterations):
        nxt = [0.0] * BUCKETS
        for overlaps, n in parts:
            inside = sum(mass[b] * share for b, share in overlaps)
            if inside <= 0:
                continue
            for b, share in overlaps:
                nxt[b] += n * mass[b] * share / inside
        mass = nxt
    return mass


MAX_SPANS = 2000  # distinct spans per upstream the estimate works on (polls land on
# bucket edges, so a few hundred is usual; more are widened to whole buckets)


def _bounded(spans: dict[Span, int]) -> dict[Span, int]:
    if len(spans) <= MAX_SPANS:
        return spans
    out: dict[Span, int] = {}
    for (lo, hi), n in spans.items():
        wide = (lo - lo % SUB, hi - hi % SUB + SUB - 1)
        out[wide] = out.get(wide, 0) + n
    return out


class Durations:
    """Learned duration distributions (expected jobs per bucket), refreshed from the store."""

    def __init__(self, min_samples: int = 30) -> None:
        self.min_samples = min_samples
        self.counts: dict[str, list[float]] = {}
        self.finished: dict[str, int] = {}  # jobs seen finishing, per upstream

    def update(self, flat: dict[str, int]) -> None:
        spans: dict[str, dict[Span, int]] = defaultdict(dict)
        for key, n in flat.items():
            upstream, _, field = key.rpartition(":")
            if (span := _parse_span(field)) is not None:
                seen = spans[upstream]
                seen[span] = seen.get(span, 0) + n
        self.counts = {upstream: estimate(_bounded(by_span)) for upstream, by_span in spans.items()}
        self.finished = {
            upstream: sum(n for span, n in by_span.items() if not _running(span))
            for upstream, by_span in spans.items()
        }

    def next_poll_s(self, upstream: str, elapsed_s: float, hazard: float) -> float | None:
        """Seconds from now to the next poll of a job running for elapsed_s, or None if
        too little is known about this upstream."""
        counts = self.counts.get(upstream)
        if not counts or self.finished.get(upstream, 0) < self.min_samples:
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
