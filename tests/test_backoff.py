"""The one exponential backoff (bridge/retry.py) gives each retry the delays it had."""

from __future__ import annotations

import random

from bridge.engine.backoff import SUBMIT_RETRY_MAX_S, SUBMIT_RETRY_MIN_S, jittered, submit_retry_s
from bridge.engine.loops import STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S
from bridge.retry import exponential_s
from bridge.store.connection import WAIT_FIRST_SLEEP_S


def test_exponential_doubles_from_the_first_delay_up_to_the_cap():
    assert [exponential_s(n, 0.5, 3.0) for n in range(6)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert exponential_s(40, 0.5) == 0.5 * 2.0**39  # no cap by default


def test_each_retry_keeps_its_schedule():
    for n in range(1, 12):  # the formulas each one had before
        assert exponential_s(n, STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S) == min(5.0, 0.1 * 2**n)
        assert exponential_s(n, WAIT_FIRST_SLEEP_S, 5.0) == min(5.0, 0.1 * 2 ** (n - 1))
        expected = min(SUBMIT_RETRY_MAX_S, SUBMIT_RETRY_MIN_S * 2 ** max(0, n - 1))
        assert submit_retry_s(n, random.Random(n)) == jittered(expected, random.Random(n))


def test_jitter_draws_from_the_given_generator_or_the_module():
    assert jittered(10.0, random.Random(3)) == jittered(10.0, random.Random(3))
    assert all(8.0 <= jittered(10.0) <= 12.0 for _ in range(100))
