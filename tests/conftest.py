"""Fixtures: a real Valkey started by the suite on a free loopback port, full stacks
(uvicorn bridge + emulator + receiver on 127.0.0.1) and the API in process, built from a
config. Their code and the shared helpers are in tests/support/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from bridge.obs.logs import configure_logging
from bridge.store import Store
from bridge.store.embedded import EmbeddedValkey
from tests.support.config import (  # noqa: F401  (re-exported for tests not yet moved)
    API_KEY,
    ENV,
    OTHER_KEY,
    OTHER_SECRET,
    SECRET,
    UPSTREAM_TOKEN,
    base_config,
    loopback_only_dns,
)
from tests.support.inprocess import ApiFactory, api_factory
from tests.support.stacks import Stack, StackFactory, stack_factory  # noqa: F401

# `pushbridge serve` started by a test is one process (not one per CPU), so that signals
# sent to it (SIGSTOP, SIGTERM, kill -9) reach the process doing the work
os.environ["PUSHBRIDGE_WORKERS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("json", "info")


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    client = Redis.from_url(valkey.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis, "pbtest", partitions=8)


@pytest.fixture
async def make_stack(valkey: EmbeddedValkey, redis: Redis) -> AsyncIterator[StackFactory]:
    """Full stacks over the suite's Valkey (tests/support/stacks.py)."""
    async with stack_factory(redis) as make:
        yield make


@pytest.fixture
async def make_api(redis: Redis) -> AsyncIterator[ApiFactory]:
    """The API alone, in process over the suite's Valkey (tests/support/inprocess.py)."""
    async with api_factory(redis) as make:
        yield make
