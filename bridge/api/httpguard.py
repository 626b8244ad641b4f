"""uvicorn's httptools protocol with limits on request heads.

httptools reads a request line and headers of any size and for any time (a 256 MiB header
was read and answered 200). This subclass feeds the parser at most `max_head_bytes` of a
request's head and answers 431 beyond; gives the head `head_timeout_s` to arrive (408,
or a silent close for a connection that never sent a byte); and answers uvicorn's own
"Invalid HTTP request" with problem+json instead of text/plain. (uvicorn's h11 protocol has
a head limit, `h11_max_incomplete_event_size`, but costs three times the CPU per request.)
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge.api.problems import Problem


def problem_response_bytes(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection."""
    body = Problem(status, code, detail).body()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading_head = True
        self._head_bytes = 0
        self._heads_done = 0
        self._head_timer: TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, code: str, detail: str) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(problem_response_bytes(status, code, detail))
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # never sent a byte: nothing to answer
            self.transport.close()
            return
        self._refuse(
            408, "request-timeout", f"request headers not received within {self.head_timeout_s:g} s"
        )

    # parser callbacks: a request's head starts at its first byte and ends with its headers
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._heads_done += 1
        self._cancel_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if not self._reading_head:  # in a body, or between requests
            super().data_received(data)
            if self._reading_head and not self.transport.is_closing():
                # a head began within this data and is not complete: count all of it (a
                # keep-alive client's next request starts at the first byte of a read)
                self._head_bytes = len(data)
                self._check_head_size()
            return
        room = self.max_head_bytes - self._head_bytes
        self._head_bytes += min(len(data), room)
        if len(data) <= room:
            super().data_received(data)
            return
        heads_done = self._heads_done
        super().data_received(data[:room])  # the head may end within the room
        if self.transport.is_closing():
            return
        if self._heads_done == heads_done:
            self._head_bytes = self.max_head_bytes + 1
            self._check_head_size()
            return
        self.data_received(data[room:])

    def _check_head_size(self) -> None:
        if self._head_bytes > self.max_head_bytes:
            self._refuse(
                431,
                "header-too-large",
                f"request line and headers exceed {self.max_head_bytes} bytes",
            )

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(problem_response_bytes(400, "invalid-request", msg))
            self.transport.close()


def guarded_protocol(max_head_bytes: int, head_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )
