"""How a request asks to wait for its job (CONTRACT §3): `Prefer: wait=N` (RFC 7240) on
POST /v1/jobs, `?wait=N` on GET /v1/jobs/{id}; N seconds, at most 60.

A preference is a hint (RFC 7240 §2): a malformed one is ignored, one above 60 is
applied as 60 (and `Preference-Applied` says so), the first `wait` of the request
counts. A query parameter is part of the request: a malformed one is a 400.
"""

from __future__ import annotations

from starlette.datastructures import Headers, QueryParams

from bridge.api.problems import Problem
from bridge.engine.waiting import MAX_WAIT_S

MAX_DIGITS = 10


def preferred_wait_s(headers: Headers) -> int | None:
    """N of the request's first `Prefer: wait=N` (capped at 60); None if absent, zero
    or malformed."""
    for header in headers.getlist("prefer"):
        for preference in header.split(","):
            token, _, value = preference.split(";", 1)[0].partition("=")
            if token.strip().lower() != "wait":
                continue
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = value[1:-1]
            if not (value.isascii() and value.isdigit()) or len(value) > MAX_DIGITS:
                return None
            return min(int(value), MAX_WAIT_S) or None
    return None


def wait_query_s(query: QueryParams) -> int | None:
    """N of `?wait=N`; None if absent or 0; 400 unless one integer from 0 to 60."""
    values = query.getlist("wait")
    if not values:
        return None
    value = values[0]
    if len(values) > 1 or not (value.isascii() and value.isdigit()) or len(value) > 2:
        raise Problem(400, "invalid-request", f"wait: must be one integer from 0 to {MAX_WAIT_S}")
    if int(value) > MAX_WAIT_S:
        raise Problem(400, "invalid-request", f"wait: must be one integer from 0 to {MAX_WAIT_S}")
    return int(value) or None
