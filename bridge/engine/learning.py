"""Polling that learns each upstream's duration distribution.

A job's duration is only known to lie between the last poll that saw it running and
the poll that saw it completed. Each completed job adds one such interval, as a pair
of buckets of a log-spaced histogram, to a per-upstream count in the store (shared by
replicas). The distribution is estimated from these interval-censored counts by
Turnbull's self-consistency (EM) algorithm, which is unbiased however coarse the
polls were: neither the lower nor the upper end of each interval is (a lower-bound
estimate makes every poll early, an upper-bound one every poll late, and each feeds
back on itself through the next polls).

With enough samples, the next poll of a running job is placed by one of two rules.

`poll.target_lag_s` (the default): the cheapest schedule for a mean delivery lag. A job
polled at `a` that finishes at s < t, before the next poll at t, waits t - s to be seen;
per job still running at `a`, the lag that waiting has accrued by t is
A(a, t) = ∫_a^t (t - s) dF(s) / S(a). The next poll goes where A reaches a threshold θ,
the same for every gap: so polls are dense where completions are (gaps about
sqrt(2θ / hazard), the square-root rule of inspection schedules, which minimises
polls plus a price on mean lag), sparse where they are rare, and just after a
point mass (a model that always takes 1 s is polled once, θ after 1 s). The mean lag
of the whole schedule is θ x expected polls per job, so θ is set (by bisection, off
the event loop, when the histogram is refreshed) to make it `target_lag_s`, with
initial_delay_s, min_interval_s and max_interval_s applied as the bridge applies them.
Until enough jobs have finished, and for a job running longer than any seen, polls
are 2 x target_lag_s apart: a fixed interval whose mean lag is target_lag_s whatever
the distribution.

`poll.adaptive_hazard`, if set: the first bucket edge where the chance that the job
finished since the last poll reaches the hazard. A low hazard polls often (low lag), a
high one rarely (few polls). Without enough samples, polling falls back to the
geometric backoff from min_interval_s to max_interval_s.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

BASE_S = 0.05
GROWTH = 1.15
BUCKETS = 90  # up to 0.05 * 1.15**90 ≈ 14 h
EDGES_S = [BASE_S * GROWTH**i for i in range(BUCKETS + 1)]
POINTS_S = [0.0, *EDGES_S[1:]]  # bucket b spans POINTS_S[b]..POINTS_S[b + 1] (0 takes all below)


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
        if not _running(span):  # start: each finished job spread evenly over its span,
            # in time, not in log time (which would make (0, 2 s] mostly "under 0.3 s")
            widths = [share * (POINTS_S[b + 1] - POINTS_S[b]) for b, share in overlaps]
            total = sum(widths)
            for (b, _), w in zip(overlaps, widths, strict=True):
                mass[b] += n * w / total
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


@dataclass(frozen=True)
class LagTarget:
    """An upstream's poll settings in target-lag mode (poll.target_lag_s and the clamps
    the bridge applies to every poll)."""

    target_lag_s: float
    initial_delay_s: float = 0.5
    min_interval_s: float = 0.5
    max_interval_s: float = 15.0

    def clamp(self, gap_s: float, first: bool) -> float:
        gap_s = min(self.max_interval_s, max(self.min_interval_s, gap_s))
        return max(self.initial_delay_s, gap_s) if first else gap_s

    @property
    def cold_gap_s(self) -> float:
        """The interval without a learned distribution: mean lag target_lag_s for any."""
        return 2 * self.target_lag_s

    @property
    def max_gap_s(self) -> float:
        """The longest gap between polls once completions are likely (see LagCurve)."""
        return MAX_GAP_LAGS * self.target_lag_s


SURVIVING = 1e-4  # a schedule is followed while more than this share of jobs still runs
MAX_GAP_LAGS = 2.0  # no gap longer than this many target lags, once jobs may finish
LIKELY = 0.01  # completions are "likely" from where this share of the jobs running has finished
MAX_WALK_POLLS = 2000


class LagCurve:
    """A learned distribution as its CDF F at bucket edges (linear within a bucket) and
    the integral of F, G(x) = ∫_0^x F; A(a, t) = (G(t) - G(a) - (t - a) F(a)) / S(a)."""

    def __init__(self, mass: list[float]) -> None:
        total = sum(mass)
        self.f = [0.0]
        for n in mass:
            self.f.append(min(1.0, self.f[-1] + n / total))
        self.f[-1] = 1.0
        self.g = [0.0]
        for k in range(1, len(POINTS_S)):
            width = POINTS_S[k] - POINTS_S[k - 1]
            self.g.append(self.g[-1] + width * (self.f[k - 1] + self.f[k]) / 2)

    def _at(self, x: float) -> tuple[float, float]:
        """(F(x), G(x))."""
        if x >= POINTS_S[-1]:
            return 1.0, self.g[-1] + (x - POINTS_S[-1])
        k = bisect_right(POINTS_S, x) - 1
        x0, x1 = POINTS_S[k], POINTS_S[k + 1]
        fx = self.f[k] + (self.f[k + 1] - self.f[k]) * (x - x0) / (x1 - x0)
        return fx, self.g[k] + (x - x0) * (self.f[k] + fx) / 2

    def survival(self, x: float) -> float:
        return 1.0 - self._at(x)[0]

    def lag_cost(self, a: float, t: float) -> float:
        """∫_a^t (t - s) dF(s): the expected lag of jobs finishing between polls a and t."""
        fa, ga = self._at(a)
        return self._at(t)[1] - ga - (t - a) * fa

    def first_likely(self, a: float, share: float = LIKELY) -> float:
        """The first time after a by which `share` of the jobs running at a have finished."""
        fa = self._at(a)[0]
        goal = fa + share * (1.0 - fa)
        k = max(bisect_right(self.f, goal), bisect_right(POINTS_S, a))  # first edge past both
        if k >= len(POINTS_S):
            return POINTS_S[-1]
        x0, x1, f0, f1 = POINTS_S[k - 1], POINTS_S[k], self.f[k - 1], self.f[k]
        at = x0 if f1 <= f0 else x0 + (x1 - x0) * (goal - f0) / (f1 - f0)
        return max(a, at)

    def next_poll(
        self, a: float, theta: float, max_gap_s: float = math.inf, first: bool = False
    ) -> float | None:
        """The first t > a where A(a, t) reaches theta, but at most max_gap_s after a, or
        for a job's first poll after its completion has become likely (first_likely: a
        model that takes ten minutes is not polled in its first nine); None if (almost)
        no job runs past a (nothing learned says when it may finish)."""
        fa, ga = self._at(a)
        surviving = 1.0 - fa
        if surviving <= SURVIVING:
            return None
        at = self._accrued_reaches(a, fa, ga, theta * surviving, surviving)
        if max_gap_s == math.inf:
            return at
        return min(at, (self.first_likely(a) if first else a) + max_gap_s)

    def _accrued_reaches(
        self, a: float, fa: float, ga: float, goal: float, surviving: float
    ) -> float:
        """The first t > a where the lag cost since a reaches goal."""

        def cost_at(k: int) -> float:
            return self.g[k] - ga - (POINTS_S[k] - a) * fa

        lo = bisect_right(POINTS_S, a)  # first edge past a
        last = len(POINTS_S) - 1
        if cost_at(last) < goal:  # past the histogram F = 1: the cost grows at slope S(a)
            return POINTS_S[last] + (goal - cost_at(last)) / surviving
        hi = last
        while lo < hi:  # first edge k with cost_at(k) >= goal
            mid = (lo + hi) // 2
            if cost_at(mid) >= goal:
                hi = mid
            else:
                lo = mid + 1
        x0 = max(a, POINTS_S[lo - 1])
        f0, g0 = self._at(x0)
        c0 = g0 - ga - (x0 - a) * fa
        slope = (self.f[lo] - self.f[lo - 1]) / (POINTS_S[lo] - POINTS_S[lo - 1])
        b, need = f0 - fa, goal - c0  # cost(x0 + u) = c0 + b u + slope u^2 / 2
        if slope <= 0:
            return x0 + need / b if b > 0 else POINTS_S[lo]
        return x0 + (math.sqrt(b * b + 2 * slope * need) - b) / slope

    def walk(self, theta: float, target: LagTarget) -> tuple[float, float]:
        """(expected polls per job, mean lag) of the schedule for theta, clamped as the
        bridge clamps it, from a job's creation until almost every job has finished."""
        polls = lag = 0.0
        a, first = 0.0, True
        for _ in range(MAX_WALK_POLLS):
            surviving = self.survival(a)
            if surviving <= SURVIVING:
                break
            nxt = self.next_poll(a, theta, target.max_gap_s, first)
            gap = target.cold_gap_s if nxt is None else nxt - a
            t = a + target.clamp(gap, first)
            polls += surviving
            lag += self.lag_cost(a, t)
            a, first = t, False
        return polls, lag

    def threshold(self, target: LagTarget) -> float:
        """θ whose schedule has a mean lag of target_lag_s (or as close as the clamps let)."""
        lo, hi = 1e-6, 1e4
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            if self.walk(mid, target)[1] > target.target_lag_s:
                hi = mid
            else:
                lo = mid
            if hi / lo < 1.001:
                break
        return lo


class Durations:
    """Learned duration distributions (expected jobs per bucket), refreshed from the store."""

    def __init__(self, min_samples: int = 30) -> None:
        self.min_samples = min_samples
        self.counts: dict[str, list[float]] = {}
        self.finished: dict[str, int] = {}  # jobs seen finishing, per upstream
        self.plans: dict[str, tuple[LagCurve, float, LagTarget]] = {}  # curve, θ, per upstream

    def update(self, flat: dict[str, int], targets: Mapping[str, LagTarget] | None = None) -> None:
        """Re-estimate every upstream's distribution from the store's histogram fields,
        and the target-lag plans of the upstreams in `targets` (CPU work: run it off the
        event loop)."""
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
        plans = {}
        for upstream, target in (targets or {}).items():
            if self._known(upstream):
                curve = LagCurve(self.counts[upstream])
                plans[upstream] = (curve, curve.threshold(target), target)
        self.plans = plans

    def _known(self, upstream: str) -> bool:
        counts = self.counts.get(upstream)
        if not counts:
            return False
        return sum(counts) > 0 and self.finished.get(upstream, 0) >= self.min_samples

    def next_poll_for_lag_s(
        self, upstream: str, elapsed_s: float, first: bool = False
    ) -> float | None:
        """Seconds from now to the next poll of a job running for elapsed_s, on the
        target-lag schedule; None if too little is known (or the job has outlived what
        is known): then poll every LagTarget.cold_gap_s."""
        plan = self.plans.get(upstream)
        if plan is None:
            return None
        curve, theta, target = plan
        at = curve.next_poll(elapsed_s, theta, target.max_gap_s, first)
        return None if at is None else max(0.0, at - elapsed_s)

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
        finished = 0.0
        for i in range(max(0, start), BUCKETS):
            finished += counts[i]
            if finished >= hazard * survivors:
                return max(0.0, EDGES_S[i + 1] - elapsed_s)
        return None
