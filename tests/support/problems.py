"""Checking RFC 9457 answers."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["type"] == f"/problems/{code}"
    assert body["status"] == status and body["title"] and body["detail"]
    return body
