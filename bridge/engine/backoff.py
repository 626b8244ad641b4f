"""Delays: poll intervals, submit retries and the callback retry schedule (with jitter)."""

from __future__ import annotations

import random

from bridge.config import PollConfig
from bridge.engine.learning import LagTarget
from bridge.retry import exponential_s

JITTER = 0.2
SUBMIT_RETRY_MIN_S = 1.0
SUBMIT_RETRY_MAX_S = 60.0


def jittered(delay_s: float, rng: random.Random | None = None, frac: float = JITTER) -> float:
    uniform = random.uniform if rng is None else rng.uniform
    return delay_s * (1 + uniform(-frac, frac))


def poll_interval_s(poll: PollConfig, polls_done: int, elapsed_s: float = 0.0) -> float:
    """Interval before the next poll after `polls_done` polls: geometric, and at least
    (backoff_factor - 1) x the job's age (a job that has run for ten minutes will not
    finish in the next half second more likely than one that just started), clamped."""
    geometric = poll.min_interval_s * poll.backoff_factor ** max(0, polls_done - 1)
    by_age = elapsed_s * (poll.backoff_factor - 1)
    return min(poll.max_interval_s, max(geometric, by_age))


def lag_target(poll: PollConfig) -> LagTarget:
    """An upstream's poll settings as the target-lag schedule uses them."""
    return LagTarget(
        poll.target_lag_s, poll.initial_delay_s, poll.min_interval_s, poll.max_interval_s
    )


def submit_retry_s(submits_done: int, rng: random.Random | None = None) -> float:
    return jittered(exponential_s(submits_done, SUBMIT_RETRY_MIN_S, SUBMIT_RETRY_MAX_S), rng)


def delivery_retry_s(
    schedule_s: list[float], attempts_done: int, rng: random.Random | None = None
) -> float:
    """Delay after the `attempts_done`-th failed attempt, ±20 %."""
    if not schedule_s:
        return 0.0
    return jittered(schedule_s[min(attempts_done - 1, len(schedule_s) - 1)], rng)


def at_least(delay_s: float, retry_after_s: float | None) -> float:
    return delay_s if retry_after_s is None else max(delay_s, retry_after_s)
