"""The store client's type, and the one place its replies are typed as they arrive.

`make_redis` (connection.py) makes every client with `decode_responses=True`, so each
reply is `str`, never `bytes`; redis-py's annotations cannot express that (they say
`bytes | str` whatever the option). The helpers here state it once, for the Store.
"""

from __future__ import annotations

from typing import Any, TypeAlias, cast

from redis.asyncio import Redis, RedisCluster

StoreClient: TypeAlias = Redis | RedisCluster  # a single node, or a Redis Cluster


def text(reply: Any) -> str:
    """A string reply of a decoding client."""
    return cast(str, reply)


def text_or_none(reply: Any) -> str | None:
    """A string reply of a decoding client, or None (a missing key)."""
    return cast(str | None, reply)


def texts(reply: Any) -> list[str]:
    """A list reply of a decoding client."""
    return cast(list[str], reply)


def text_hash(reply: Any) -> dict[str, str]:
    """A hash reply (HGETALL) of a decoding client."""
    return cast(dict[str, str], reply)
