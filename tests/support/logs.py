"""Reading what the bridge logs."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import structlog

from bridge.obs.logs import configure_logging


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """structlog's lines into a buffer; the previous configuration is restored after."""
    previous = structlog.get_config()
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    try:
        yield buf
    finally:
        structlog.configure(**previous)
