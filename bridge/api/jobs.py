"""The HTTP API of CONTRACT §3: jobs, attempts, redeliver, cancel, results, health."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api.problems import Problem
from bridge.config import Tenant
from bridge.delivery.urlpolicy import CallbackRejected
from bridge.engine.events import JobEvents
from bridge.engine.runtime import Runtime
from bridge.model import job_view, new_job_fields
from bridge.store import valid_job_id

MAX_METADATA_BYTES = 16 * 1024
MAX_INPUT_DEPTH = 64
IDEMPOTENCY_KEY_RE = re.compile(r"[!-~]{1,255}")
JSON_TYPES = ("application/json",)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    upstream: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any]
    callback_url: str = Field(min_length=1)
    metadata: dict[str, Any] | None = None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime


def authenticate(request: Request) -> Tenant:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    tenant = (
        _rt(request).secrets.tenant_for_key(key.strip()) if scheme.lower() == "bearer" else None
    )
    if tenant is None:
        raise Problem(
            401,
            "unauthorized",
            "missing or unknown API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    structlog.contextvars.bind_contextvars(tenant=tenant.name)
    return tenant


async def read_body(request: Request, limit_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise Problem(413, "payload-too-large", f"body exceeds {limit_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise Problem(413, "payload-too-large", f"body exceeds {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_job_request(body: bytes, content_type: str) -> JobRequest:
    if content_type.split(";")[0].strip().lower() not in JSON_TYPES:
        raise Problem(415, "unsupported-media-type", "Content-Type must be application/json")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Problem(400, "invalid-request", f"body is not valid JSON: {e}") from None
    try:
        req = JobRequest.model_validate(raw)
    except ValidationError as e:
        detail = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()
        )
        raise Problem(400, "invalid-request", detail) from None
    if _depth(req.inputs) > MAX_INPUT_DEPTH:
        raise Problem(400, "invalid-request", f"inputs nest deeper than {MAX_INPUT_DEPTH} levels")
    if req.metadata is not None and len(orjson.dumps(req.metadata)) > MAX_METADATA_BYTES:
        raise Problem(400, "invalid-request", f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    return req


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return deepest


async def _check_callback(rt: Runtime, url: str) -> None:
    try:
        await rt.policy.resolve(url)
    except CallbackRejected as e:
        raise Problem(422, "callback-rejected", str(e), rule=e.rule) from None


async def create_job(request: Request) -> Response:
    rt = _rt(request)
    tenant = authenticate(request)
    idem_key = request.headers.get("idempotency-key") or None  # empty = no key
    if idem_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(idem_key):
        raise Problem(
            400, "invalid-request", "Idempotency-Key must be 1-255 visible ASCII characters"
        )
    req = parse_job_request(
        await read_body(request, rt.config.listen.max_body_bytes),
        request.headers.get("content-type", ""),
    )
    upstream = rt.upstreams.get(req.upstream)
    if upstream is None:
        raise Problem(404, "unknown-upstream", f"no upstream named {req.upstream!r}")
    await _check_callback(rt, req.callback_url)
    fields = new_job_fields(
        tenant.name,
        req.upstream,
        req.inputs,
        req.callback_url,
        req.metadata,
        upstream.config.poll.deadline_s,
    )
    body_sha = hashlib.sha256(orjson.dumps(req.model_dump(), option=orjson.OPT_SORT_KEYS))
    lease_ms = int((upstream.config.submit_timeout_s + 5) * 1000)
    created = await rt.store.create_job(
        tenant.name, fields, lease_ms, body_sha.hexdigest(), idem_key, rt.retention_ms
    )
    if not created.created:
        return await _idempotent_replay(
            rt, tenant, created.job_id, created.body_sha256, body_sha.hexdigest()
        )
    structlog.contextvars.bind_contextvars(job_id=created.job_id, upstream=req.upstream)
    rt.metrics.jobs_submitted.labels(req.upstream).inc()
    job = {
        **{k: str(v) for k, v in fields.items()},
        "id": created.job_id,
        "created_at": str(created.now_ms),
        "updated_at": str(created.now_ms),
    }
    return await _submit_now(rt, job, created.token)


async def _submit_now(rt: Runtime, job: dict[str, str], token: str) -> Response:
    try:
        outcome = await JobEvents(rt).accepted(job, token)
    except RedisError as e:  # the job is stored; a worker submits it when the lease runs out
        rt.log.warning("store error after accepting job", error=str(e))
        outcome = None
    if outcome is not None and outcome.kind == "rejected":
        raise Problem(
            422,
            "upstream-rejected",
            f"upstream answered {outcome.status_code}",
            upstream_status=outcome.status_code,
            upstream_body=outcome.detail,
            job_id=job["id"],
        )
    rt.log.info("job accepted", status=job["status"])
    headers = {"Location": f"/v1/jobs/{job['id']}"}
    return _json(job_view(job), 202, headers)


async def _idempotent_replay(
    rt: Runtime, tenant: Tenant, job_id: str, stored_sha: str, body_sha: str
) -> Response:
    if stored_sha != body_sha:
        raise Problem(
            409, "idempotency-conflict", "this Idempotency-Key was used with a different body"
        )
    return _json(
        await _view(rt, await _owned_job(rt, tenant, job_id)),
        200,
        {"Location": f"/v1/jobs/{job_id}"},
    )


async def _owned_job(rt: Runtime, tenant: Tenant, job_id: str) -> dict[str, str]:
    job = await rt.store.get_job(job_id) if valid_job_id(job_id) else {}
    if not job or job.get("tenant") != tenant.name:
        raise Problem(404, "not-found", f"no job {job_id}")
    structlog.contextvars.bind_contextvars(job_id=job_id, upstream=job.get("upstream"))
    return job


async def _view(rt: Runtime, job: dict[str, str]) -> dict[str, Any]:
    size = int(job.get("result_size") or 0)
    if job["status"] != "completed":
        return job_view(job)
    if size > rt.config.callbacks.max_inline_result_bytes:
        return job_view(job, None, rt.result_url(job["id"]))
    result = await rt.store.get_result(job["id"])
    return job_view(job, orjson.loads(result) if result else None)


async def get_job(request: Request) -> Response:
    rt = _rt(request)
    job = await _owned_job(rt, authenticate(request), request.path_params["job_id"])
    return _json(await _view(rt, job))


async def get_attempts(request: Request) -> Response:
    rt = _rt(request)
    job = await _owned_job(rt, authenticate(request), request.path_params["job_id"])
    records = await rt.store.get_attempts(job["id"])
    return _json({"job_id": job["id"], "attempts": [orjson.loads(r) for r in records]})


async def redeliver(request: Request) -> Response:
    rt = _rt(request)
    tenant = authenticate(request)
    job = await _owned_job(rt, tenant, request.path_params["job_id"])
    outcome = await rt.store.redeliver(job["id"], tenant.name)
    if outcome == "missing":
        raise Problem(404, "not-found", f"no job {job['id']}")
    if outcome == "cancelled":
        raise Problem(409, "job-cancelled", "job was cancelled; a cancelled job has no callback")
    if outcome != "ok":
        raise Problem(409, "job-not-terminal", f"job is {outcome}; nothing to deliver")
    JobEvents(rt).redelivery_scheduled(job["id"])
    return _json(await _view(rt, await rt.store.get_job(job["id"])), 202)


async def cancel(request: Request) -> Response:
    rt = _rt(request)
    tenant = authenticate(request)
    job = await _owned_job(rt, tenant, request.path_params["job_id"])
    outcome = await rt.store.cancel(job["id"], tenant.name, rt.retention_ms)
    JobEvents(rt).cancelled(job["id"])
    if outcome == "missing":
        raise Problem(404, "not-found", f"no job {job['id']}")
    if outcome != "ok":
        raise Problem(409, "job-terminal", f"job is already {outcome}")
    rt.metrics.jobs_finished.labels(job["upstream"], "cancelled").inc()
    return _json(job_view(await rt.store.get_job(job["id"])))


def _result_response(job: dict[str, str], result: str | None) -> Response:
    if job["status"] in ("queued", "running"):
        raise Problem(409, "job-not-terminal", f"job is {job['status']}")
    if job["status"] != "completed" or result is None:
        raise Problem(404, "no-result", f"job is {job['status']} and has no result")
    return Response(result.encode(), media_type="application/json")


async def get_result(request: Request) -> Response:
    rt = _rt(request)
    job = await _owned_job(rt, authenticate(request), request.path_params["job_id"])
    return _result_response(job, await rt.store.get_result(job["id"]))


async def get_result_by_link(request: Request) -> Response:
    rt = _rt(request)
    job_id = request.path_params["job_id"]
    q = request.query_params
    if not valid_job_id(job_id) or not rt.links.verify(
        job_id, q.get("expires", ""), q.get("sig", ""), time.time()
    ):
        raise Problem(403, "invalid-link", "the link is invalid or has expired")
    job, result = await rt.store.get_job_and_result(job_id)
    if not job:
        raise Problem(404, "not-found", f"no job {job_id}")
    return _result_response(job, result)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await _rt(request).store.ping()
    except (RedisError, OSError) as e:
        raise Problem(
            503,
            "store-unavailable",
            f"store unreachable: {type(e).__name__}",
            headers={"Retry-After": "1"},
        ) from None
    return JSONResponse({"status": "ready"})


async def job_resource(request: Request) -> Response:
    """GET reads a job, DELETE cancels it (one route, so 405 answers list both)."""
    return await (cancel(request) if request.method == "DELETE" else get_job(request))


JOB_ROUTES = [
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs/{job_id}", job_resource, methods=["GET", "DELETE"]),
    Route("/v1/jobs/{job_id}/attempts", get_attempts, methods=["GET"]),
    Route("/v1/jobs/{job_id}/redeliver", redeliver, methods=["POST"]),
    Route("/v1/jobs/{job_id}/result", get_result, methods=["GET"]),
    Route("/v1/results/{job_id}", get_result_by_link, methods=["GET"]),
]
OPS_ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
