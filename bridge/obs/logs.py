"""structlog setup: JSON lines in production, readable console output in dev."""

from __future__ import annotations

import logging
import sys
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
