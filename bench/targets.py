"""The targets of the benchmark issue, checked against one run's results."""

from __future__ import annotations

from typing import Any

KIB = 1024


def _find(results: list[dict], variant: str, workload: str) -> dict | None:
    return next((r for r in results if r["variant"] == variant and r["workload"] == workload), None)


def check(results: list[dict]) -> list[tuple[str, bool | None, str]]:
    """(target, met? (None = not measured in this run), the figures)."""
    out: list[tuple[str, bool | None, str]] = []
    a, b = _find(results, "a-pushbridge", "realistic"), _find(results, "b-naive-1s", "realistic")
    if a and b:
        ratio = a["polls_per_job"] / b["polls_per_job"]
        out.append(
            (
                "(ii) polls/job ≤ ½ of naive",
                ratio <= 0.5,
                f"{a['polls_per_job']} vs {b['polls_per_job']} (ratio {ratio:.2f})",
            )
        )
        out.append(
            (
                "(ii) lag p50 no worse than naive",
                a["lag_p50_ms"] <= b["lag_p50_ms"],
                f"{a['lag_p50_ms']} ms vs {b['lag_p50_ms']} ms",
            )
        )
    if a:
        limit = 3 + a["polls_per_job"]
        out.append(
            (
                "(ii) round trips/job ≤ 3 + 1 per poll",
                a["redis_round_trips_per_job"] <= limit,
                f"{a['redis_round_trips_per_job']} ≤ {limit:.2f}",
            )
        )
    burst = _find(results, "a-pushbridge", "burst")
    if burst:
        out.append(
            (
                "(i) ≥ 500 jobs/s end to end, one bridge process",
                burst["jobs_per_s"] >= 500,
                f"{burst['jobs_per_s']} jobs/s",
            )
        )
    scale: Any = _find(results, "a-pushbridge", "scale")
    if scale:
        out.append(
            (
                "(iii) store memory ≤ 1 KiB per in-flight job",
                scale["redis_bytes_per_inflight_job"] <= KIB,
                f"{scale['redis_bytes_per_inflight_job']} bytes",
            )
        )
        late = scale["due_lateness_p99_ms"]
        out.append(
            ("(iii) due-lateness p99 < 1 s", None if late is None else late < 1000, f"{late} ms")
        )
    return out


def report(results: list[dict]) -> str:
    lines = []
    for name, ok, figures in check(results):
        mark = "n/a " if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"{mark}  {name}: {figures}")
    return "\n".join(lines)
