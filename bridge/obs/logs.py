"""structlog setup: JSON lines in production, readable console output in dev."""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset({"authorization", "token", "api_key", "secret", "webhook_secret"})


def _drop_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in SECRET_KEYS & event.keys():
        event[key] = "[redacted]"
    return event


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
        structlog.processors.format_exc_info if json_output else structlog.dev.set_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")


def exception_fields(exc: BaseException) -> dict[str, str]:
    """An exception as log fields: its type, its message (short) and where it was raised.
    Never its repr nor its chain (an HTTP client's error may hold the request's headers)."""
    fields = {"error_type": type(exc).__name__, "error": str(exc)[:300]}
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = "/".join(last.filename.rsplit("/", 2)[-2:])
        fields["raised_at"] = f"{where}:{last.lineno} in {last.name}"
    return fields


def log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Event-loop exception handler: asyncio's default one prints repr(task), which may
    show secrets; this logs the message and the exception's type and text only."""
    exc = context.get("exception")
    fields = exception_fields(exc) if isinstance(exc, BaseException) else {}
    message = str(context.get("message") or "unhandled error in the event loop")
    structlog.get_logger("pushbridge").error(message, **fields)
