"""The benchmark workloads: how many jobs, how long they run upstream, when they arrive."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: int
    duration_s: float  # median upstream duration
    duration_p95_s: float | None = None  # set → log-normal
    arrival_per_s: float | None = None  # None → all at once (burst)
    seed: int = 11

    def arrivals_s(self) -> list[float]:
        """Submission offsets from the start (Poisson arrivals, or all at 0)."""
        if self.arrival_per_s is None:
            return [0.0] * self.jobs
        rng, t, out = random.Random(self.seed), 0.0, []
        for _ in range(self.jobs):
            t += rng.expovariate(self.arrival_per_s)
            out.append(t)
        return out

    def scaled(self, factor: float) -> Workload:
        jobs = max(10, int(self.jobs * factor))
        rate = None if self.arrival_per_s is None else self.arrival_per_s * factor
        return Workload(self.name, jobs, self.duration_s, self.duration_p95_s, rate, self.seed)


WORKLOADS = {
    "burst": Workload("burst", 5000, 1.0),
    "realistic": Workload("realistic", 2000, 4.0, 20.0, arrival_per_s=40.0),
    "scale": Workload("scale", 100_000, 600.0),
}
