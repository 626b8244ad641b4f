"""What polling can do at best on a workload's duration distribution, computed exactly.

    python -m bench.frontier            # the realistic workload (log-normal, median 4 s, p95 20 s)

Curves of (polls per job, delivery lag p50) for the plot, and a bound:

- target lag: the bridge's default rule (poll.target_lag_s, bridge.engine.learning), with
  the true distribution as its histogram, for several targets;
- oracle: the hazard rule (poll.adaptive_hazard, clamped as the bridge clamps it) handed
  the true distribution instead of a learned one;
- the cheapest schedule of poll times (any schedule on a 1 % geometric grid) that keeps
  delivery lag p50 at or under a given lag: minimise expected polls - mu * P(lag <= d)
  by dynamic programming over "last poll at grid point i, job still running", with mu
  found by bisection. Expected polls of a schedule t1 < t2 < … are Σ P(T > t(k-1)); the
  lag is ≤ d exactly when T falls in [t(k) - d, t(k)) for the first poll after T.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

from bench.workloads import WORKLOADS, Workload
from bridge.engine.learning import Durations, LagTarget, bucket_of

Z95 = 1.6448536269514722


@dataclass(frozen=True)
class LogNormal:
    median_s: float
    p95_s: float

    @property
    def sigma(self) -> float:
        return math.log(self.p95_s / self.median_s) / Z95

    def cdf(self, t: float) -> float:
        if t <= 0:
            return 0.0
        z = (math.log(t) - math.log(self.median_s)) / self.sigma
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def sample(self, n: int, seed: int) -> list[float]:
        rng = random.Random(seed)
        return [rng.lognormvariate(math.log(self.median_s), self.sigma) for _ in range(n)]


def evaluate(schedule: list[float], dist: LogNormal, lag_s: float) -> tuple[float, float]:
    """(expected polls per job, P(lag ≤ lag_s)) of a poll schedule, exactly."""
    polls, covered, prev = 0.0, 0.0, 0.0
    for t in schedule:
        polls += 1 - dist.cdf(prev)
        covered += dist.cdf(t) - dist.cdf(max(prev, t - lag_s))
        prev = t
    return polls, covered


def cheapest_schedule(
    dist: LogNormal, lag_s: float, mu: float, step: float = 1.01, horizon_s: float = 400.0
) -> list[float]:
    """The schedule minimising expected polls - mu * P(lag <= lag_s), over a grid."""
    grid = [0.0]
    t = 0.05
    while t < horizon_s:
        grid.append(t)
        t *= step
    n = len(grid)
    cdf = [dist.cdf(g) for g in grid]
    value = [0.0] * n
    choice = [n - 1] * n
    for i in range(n - 2, -1, -1):
        survive = 1 - cdf[i]
        best, best_j = math.inf, n - 1
        for j in range(i + 1, n):
            lo = grid[j] - lag_s
            cov = cdf[j] - (cdf[i] if lo <= grid[i] else dist.cdf(lo))
            v = survive - mu * cov + value[j]
            if v < best:
                best, best_j = v, j
            if grid[j] - grid[i] > 60:
                break
        value[i], choice[i] = best, best_j
    schedule, i = [], 0
    while i < n - 1:
        i = choice[i]
        schedule.append(grid[i])
    return schedule


def min_polls_for_lag_p50(dist: LogNormal, lag_s: float) -> tuple[float, float]:
    """(expected polls, coverage) of the cheapest schedule with P(lag ≤ lag_s) ≥ ½."""
    lo, hi = 0.0, 200.0
    best = (math.inf, 0.0)
    for _ in range(18):
        mu = (lo + hi) / 2
        polls, covered = evaluate(cheapest_schedule(dist, lag_s, mu), dist, lag_s)
        if covered >= 0.5:
            best, hi = min(best, (polls, covered)), mu
        else:
            lo = mu
    return best


def oracle_hazard(
    dist: LogNormal, hazard: float, min_interval_s: float = 0.5, max_interval_s: float = 15.0
) -> list[float]:
    """The bridge's poll times for a job, with the true distribution as its histogram."""
    d = Durations(min_samples=1)
    d.update(_histogram(dist))
    first = d.next_poll_s("m", 0.0, hazard) or 0.0
    times = [first]
    while times[-1] < 400:
        nxt = d.next_poll_s("m", times[-1], hazard) or max_interval_s
        times.append(times[-1] + min(max_interval_s, max(min_interval_s, nxt)))
    return times


def target_lag_schedule(dist: LogNormal, target_lag_s: float) -> list[float]:
    """The bridge's poll times for a job on the target-lag rule (default clamps), with the
    true distribution as its histogram."""
    target = LagTarget(target_lag_s)
    d = Durations(min_samples=1)
    d.update(_histogram(dist), {"m": target})
    times = [0.0]
    while times[-1] < 400:
        learned = d.next_poll_for_lag_s("m", times[-1], first=len(times) == 1)
        gap = target.cold_gap_s if learned is None else learned
        times.append(times[-1] + target.clamp(gap, first=len(times) == 1))
    return times[1:]


def lag_quantiles(schedule: list[float], durations: list[float]) -> tuple[float, float, float]:
    """(polls per job, lag p50, lag p99 in s) of a schedule over sampled durations."""
    polls, lags = 0, []
    for t in durations:
        k = next(i for i, p in enumerate(schedule) if p >= t)
        polls += k + 1
        lags.append(schedule[k] - t)
    lags.sort()
    return polls / len(durations), lags[len(lags) // 2], lags[int(0.99 * len(lags))]


def _histogram(dist: LogNormal, n: int = 100_000) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in dist.sample(n, seed=99):
        key = f"m:{bucket_of(t)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def simulate(schedule: list[float], durations: list[float]) -> tuple[float, float]:
    """(polls per job, lag p50 in s) of a schedule over sampled durations."""
    polls, lags = 0, []
    for t in durations:
        k = next(i for i, p in enumerate(schedule) if p >= t)
        polls += k + 1
        lags.append(schedule[k] - t)
    return polls / len(durations), statistics.median(lags)


def frontier(
    w: Workload,
    hazards: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.35, 0.5),
    targets: tuple[float, ...] = (0.5, 0.7, 0.9, 1.2, 1.6),
) -> dict:
    assert w.duration_p95_s, "a log-normal workload"
    dist = LogNormal(w.duration_s, w.duration_p95_s)
    sample = dist.sample(20_000, seed=w.seed)
    naive = [float(k) for k in range(1, 500)]
    out = {
        "naive_1s": simulate(naive, sample),
        "naive_1s_p99": lag_quantiles(naive, sample)[2],
        "oracle_hazard": {h: simulate(oracle_hazard(dist, h), sample) for h in hazards},
        "oracle_hazard_p99": {h: lag_quantiles(oracle_hazard(dist, h), sample)[2] for h in hazards},
        "target_lag": {t: lag_quantiles(target_lag_schedule(dist, t), sample) for t in targets},
    }
    lag_p50 = out["naive_1s"][1]
    out["min_polls_for_naive_lag_p50"] = min_polls_for_lag_p50(dist, lag_p50)[0]
    out["min_polls_for_twice_naive_lag_p50"] = min_polls_for_lag_p50(dist, 2 * lag_p50)[0]
    return out


def main() -> None:
    w = WORKLOADS["realistic"]
    f = frontier(w)
    polls, lag = f["naive_1s"]
    print(f"naive 1 s poller: {polls:.2f} polls/job, lag p50 {lag * 1000:.0f} ms")
    for t, (p, p50, p99) in f["target_lag"].items():
        print(
            f"target-lag rule, true distribution, target_lag_s {t}: {p:.2f} polls/job, "
            f"lag p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )
    for h, (p, lag_h) in f["oracle_hazard"].items():
        print(
            f"hazard rule, true distribution, hazard {h}: {p:.2f} polls/job, "
            f"lag p50 {lag_h * 1000:.0f} ms, p99 {f['oracle_hazard_p99'][h] * 1000:.0f} ms"
        )
    print(
        f"cheapest schedule with lag p50 ≤ {lag * 1000:.0f} ms: "
        f"{f['min_polls_for_naive_lag_p50']:.2f} polls/job; with lag p50 ≤ "
        f"{2 * lag * 1000:.0f} ms: {f['min_polls_for_twice_naive_lag_p50']:.2f} polls/job"
    )


if __name__ == "__main__":
    main()
