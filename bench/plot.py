"""Plot delivery lag against upstream polls per job for each variant (bench/out/*.png).

python -m bench.plot [bench/out/results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.frontier import frontier
from bench.workloads import WORKLOADS

OUT = Path(__file__).resolve().parent / "out"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in results if "lag_p50_ms" in r})
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for r in (r for r in results if r["workload"] == workload and "lag_p50_ms" in r):
            x = r["polls_per_job"]
            ax.errorbar(
                x,
                r["lag_p50_ms"],
                yerr=[[0], [r["lag_p99_ms"] - r["lag_p50_ms"]]],
                fmt="o",
                capsize=4,
                label=r["variant"],
            )
            ax.annotate(
                r["variant"],
                (x, r["lag_p50_ms"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
        if workload == "realistic":
            _plot_frontier(ax)
        ax.set_title(f"{workload}: delivery lag p50 (bar to p99) vs polls per job")
        ax.set_xlabel("upstream polls per job")
        ax.set_ylabel("delivery lag (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_frontier(ax) -> None:
    """What polling can do at best on this distribution (bench/frontier.py)."""
    f = frontier(WORKLOADS["realistic"])
    target_lag = sorted((p, p50) for p, p50, _ in f["target_lag"].values())
    curves = (
        (sorted(f["oracle_hazard"].values()), "--", "grey", "hazard rule"),
        (target_lag, ":", "black", "target-lag rule"),
    )
    for points, style, color, rule in curves:
        ax.plot(
            [p for p, _ in points],
            [lag * 1000 for _, lag in points],
            style,
            color=color,
            label=f"{rule} given the true distribution",
        )
    ax.plot(
        [f["min_polls_for_naive_lag_p50"]],
        [f["naive_1s"][1] * 1000],
        "x",
        color="black",
        label="cheapest schedule with a 1 s poller's lag p50",
    )
    ax.legend(fontsize=7, loc="upper right")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT / "results.json"
    target = OUT / "lag-vs-polls.png"
    plot(json.loads(source.read_text()), target)
    print(target)
