"""A webhook receiver for the demo, tests and benchmarks: records and verifies deliveries.

Verification uses the `standardwebhooks` reference package, not pushbridge's own code.
Replies can be planned per path (status, headers, delay) to exercise failure paths.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes = b'{"ok": true}'


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float
    verified: bool | None
    answered: int
    query: bytes = b""  # the raw query string, as sent

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = orjson.loads(self.body)
        return event

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class Receiver:
    def __init__(self, secrets: list[str] | tuple[str, ...] = ()) -> None:
        self.verifiers = [Webhook(s) for s in secrets]
        self.deliveries: list[Delivery] = []
        self.plans: defaultdict[str, deque[Reply]] = defaultdict(deque)
        self.path_defaults: dict[str, Reply] = {}
        self.default = Reply()
        self.chooser: Callable[[str], Reply] | None = None  # picks a reply per request
        self.arrivals: list[tuple[str, float]] = []  # (path, time) as requests come in
        self._changed = asyncio.Condition()

    def plan(self, path: str, *replies: Reply) -> None:
        self.plans[path].extend(replies)

    def verify(self, body: bytes, headers: dict[str, str]) -> bool | None:
        if not self.verifiers:
            return None
        for verifier in self.verifiers:
            try:
                verifier.verify(body, headers)
                return True
            except WebhookVerificationError:
                continue
        return False

    def _reply(self, path: str) -> Reply:
        if self.plans[path]:
            return self.plans[path].popleft()
        if self.chooser is not None:
            return self.chooser(path)
        return self.path_defaults.get(path, self.default)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        path = request.url.path
        reply = self._reply(path)
        arrived = time.time()
        self.arrivals.append((path, arrived))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        verified = self.verify(body, headers)
        query = request.scope.get("query_string", b"")
        record = Delivery(path, headers, body, arrived, verified, reply.status, query)
        async with self._changed:
            self.deliveries.append(record)
            self._changed.notify_all()
        return Response(reply.body, reply.status, reply.headers, media_type="application/json")

    def to(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]

    def succeeded(self) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.answered < 300]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(_wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])
