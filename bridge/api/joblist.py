"""GET /v1/jobs: the tenant's jobs, newest first, a page at a time (CONTRACT §3); and the
one route of /v1/jobs (GET lists, POST creates)."""

from __future__ import annotations

from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.api.jobs import MAX_UPSTREAM_CHARS, _json, authenticate, create_job
from bridge.api.problems import Problem
from bridge.engine.runtime import Runtime
from bridge.model import DeliveryState, Job, JobStatus, job_view, result_inline
from bridge.store import ListQuery
from bridge.store.lists import MAX_LIMIT, decode_cursor, encode_cursor

E = TypeVar("E", JobStatus, DeliveryState)
DEFAULT_LIMIT = 50
QUERY_KEYS = ("status", "delivery", "upstream", "limit", "cursor")


def _invalid(detail: str) -> Problem:
    return Problem(400, "invalid-request", detail)


def _one(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise _invalid(f"{key}: give it once")
    return values[0] if values else None


def _states(key: str, text: str | None, enum: type[E]) -> tuple[E, ...]:
    """Comma-separated values of `enum`, each once, in the enum's order."""
    if text is None:
        return ()
    words = {w.strip() for w in text.split(",") if w.strip()}
    known = {e.value for e in enum}
    unknown = sorted(words - known)
    if unknown or not words:
        raise _invalid(
            f"{key}: {', '.join(map(repr, unknown)) or 'empty'}; comma-separated values "
            f"of: {', '.join(known)}"
        )
    return tuple(e for e in enum if e.value in words)


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise _invalid(f"limit: an integer from 1 to {MAX_LIMIT}")
    return int(text)


def parse_list_query(request: Request) -> ListQuery:
    """The query of GET /v1/jobs, checked; an unknown parameter is refused (a misspelt
    filter must not list everything)."""
    unknown = sorted(set(request.query_params) - set(QUERY_KEYS))
    if unknown:
        raise _invalid(f"unknown query parameter {unknown[0]!r}; known: {', '.join(QUERY_KEYS)}")
    upstream, cursor = _one(request, "upstream"), _one(request, "cursor")
    if upstream is not None and not 1 <= len(upstream) <= MAX_UPSTREAM_CHARS:
        raise _invalid(f"upstream: 1 to {MAX_UPSTREAM_CHARS} characters")
    below = None
    if cursor is not None and (below := decode_cursor(cursor)) is None:
        raise _invalid("cursor: not a next_cursor of this API")
    return ListQuery(
        limit=_limit(_one(request, "limit")),
        statuses=_states("status", _one(request, "status"), JobStatus),
        states=_states("delivery", _one(request, "delivery"), DeliveryState),
        upstream=upstream,
        below=below,
    )


def _listed(rt: Runtime, job: Job) -> dict[str, Any]:
    """A job as listed: its object without the result (GET /v1/jobs/{id} has it), with the
    result_url of a result too large to inline."""
    large = job.status == JobStatus.COMPLETED and not result_inline(
        job, rt.config.callbacks.max_inline_result_bytes
    )
    return job_view(job, None, rt.result_url(job.id) if large else None)


async def list_jobs(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    tenant = authenticate(request)
    query = parse_list_query(request)
    page = await rt.store.list_jobs(tenant.name, query)
    return _json(
        {
            "data": [_listed(rt, job) for job in page.jobs],
            "next_cursor": encode_cursor(page.next_member) if page.next_member else None,
        }
    )


async def jobs_collection(request: Request) -> Response:
    """GET lists the tenant's jobs, POST creates one (one route, so 405 answers list both)."""
    return await (list_jobs(request) if request.method == "GET" else create_job(request))


COLLECTION_ROUTE = Route("/v1/jobs", jobs_collection, methods=["GET", "POST"])
