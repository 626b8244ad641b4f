"""`pushbridge check`'s lines for one upstream, for the protocols' tests."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from bridge.cli.check import Report, _check_upstreams
from bridge.config import parse_config
from tests.conftest import base_config


async def check_lines(upstream: dict[str, Any], key: str) -> tuple[int, str]:
    """`pushbridge check`'s upstream lines for one upstream and its key."""
    raw = base_config("http://127.0.0.1:1", upstreams={"u": upstream})
    out = io.StringIO()
    report = Report(Console(file=out, width=300, no_color=True))
    await _check_upstreams(parse_config(raw, {}), {"u": key}, report)
    return report.errors, out.getvalue()


async def check_verifies(upstream: dict[str, Any], good: str, bad: str) -> tuple[str, str]:
    """`pushbridge check`'s lines for the upstream with a good token (accepted, no error)
    and a bad one (refused, one error); neither token is shown."""
    errors, accepted = await check_lines(upstream, good)
    assert errors == 0 and "u token: accepted" in accepted, accepted
    errors, refused = await check_lines(upstream, bad)
    assert errors == 1 and "u token: refused" in refused, refused
    assert good not in accepted + refused and bad not in refused
    return accepted, refused
