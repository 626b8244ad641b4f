"""Automatic pipelining: script calls made in one event-loop iteration share one
round trip to the store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

Call = tuple[Any, list[str], list[Any]]  # (script, keys, args)
SendBatch = Callable[[list[Call]], Awaitable[list[Any]]]
Shard = Callable[[Call], Hashable]  # which server a call goes to (a cluster's master)


class AutoPipeline:
    """Queues calls and flushes them together on the next loop iteration.

    Every coroutine that is ready in the same iteration (a burst of completed polls,
    say) adds its call before the flush, so N concurrent commits cost one pipelined
    round trip instead of N. A call alone waits one loop iteration, not a timer.
    `send_batch` returns one reply per call, an exception object for a failed call;
    an error of the whole round trip fails every call of the batch.

    With `shard` (a cluster), a batch is split by the server each call goes to and each
    part is sent on its own: calls to a master that is failing over wait for it (and are
    retried by `send_batch`), while the others' callers hear at once.
    """

    def __init__(
        self, send_batch: SendBatch, max_batch: int = 256, shard: Shard | None = None
    ) -> None:
        self._send_batch = send_batch
        self._max_batch = max_batch
        self._shard = shard
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._inflight: set[asyncio.Task[None]] = set()

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(((script, keys, args), future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        elif len(self._pending) >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        for part in self._split(batch) if batch else []:
            task = asyncio.ensure_future(self._send(part))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _split(
        self, batch: list[tuple[Call, asyncio.Future[Any]]]
    ) -> list[list[tuple[Call, asyncio.Future[Any]]]]:
        if self._shard is None:
            return [batch]
        parts: dict[Hashable, list[tuple[Call, asyncio.Future[Any]]]] = {}
        for item in batch:
            try:
                key = self._shard(item[0])
            except Exception:  # unroutable here: send_batch answers it (a call must not hang)
                key = None
            parts.setdefault(key, []).append(item)
        return list(parts.values())

    async def _send(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send_batch([call for call, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as e:  # the round trip failed: every call in it failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
