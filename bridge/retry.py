"""Exponential backoff, the one formula of every retry delay (engine steps, claim loops,
waiting for the store at start). A leaf: any layer may use it."""

from __future__ import annotations

import math


def exponential_s(failures: int, first_s: float, max_s: float = math.inf) -> float:
    """The delay after the `failures`-th failure in a row: first_s, doubling, at most max_s
    (0 or fewer failures count as the first)."""
    return min(max_s, first_s * 2.0 ** max(0, failures - 1))
