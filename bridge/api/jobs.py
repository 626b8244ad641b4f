"""The HTTP API of CONTRACT §3: jobs, attempts, redeliver, cancel, results, health."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api.jsonshape import Shape, integers_beyond_64_bits, measure
from bridge.api.problems import Problem
from bridge.api.requestbody import body_cost_bytes, read_body, reservation
from bridge.api.waiting import preferred_wait_s, wait_query_s
from bridge.config import Tenant
from bridge.delivery.urlpolicy import CallbackRejected
from bridge.engine.events import JobEvents
from bridge.engine.runtime import Runtime
from bridge.model import ACTIVE, TERMINAL, Job, JobStatus, job_view, new_job, result_inline
from bridge.obs.logs import exception_fields
from bridge.store import InFlightLimit, valid_job_id
from bridge.upstreams.base import Rejected

MAX_METADATA_BYTES = 16 * 1024
MAX_INPUT_DEPTH = 64  # for inputs and metadata alike
MAX_BODY_DEPTH = MAX_INPUT_DEPTH + 1  # the body object around them
MAX_UPSTREAM_CHARS = 200
IDEMPOTENCY_KEY_RE = re.compile(r"[!-~]{1,255}")
JSON_TYPES = ("application/json",)
# the API holds a new job's lease for its submit: the upstream's submit timeout plus this
# margin (for the store commit after it), then a worker may take the job over
SUBMIT_LEASE_MARGIN_S = 5.0
BEARER_RE = re.compile(r"(?i)\bbearer\s+\S+")
IN_FLIGHT_RETRY_S = 1  # Retry-After of a creation refused by limits.max_jobs_in_flight


JOB_FIELDS = ("upstream", "inputs", "callback_url", "metadata")  # the body's (openapi.py)


@dataclass(frozen=True)
class JobBody:
    """A checked job body, its inputs and metadata already serialized (no object tree is
    kept while the request waits for the store or the upstream)."""

    upstream: str
    callback_url: str | None  # None: the job is only read back (and waited for)
    inputs_json: str
    metadata_json: str
    sha256: str  # of the canonical body (sorted keys): what Idempotency-Key replays compare


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime  # set by create_app
    return rt


def authenticate(request: Request) -> Tenant:
    """The tenant of the one `Authorization: Bearer <key>` header (scheme case-insensitive,
    RFC 7235). Two Authorization headers are refused: a proxy in front may read the other."""
    headers = request.headers.getlist("authorization")
    scheme, _, key = (headers[0] if len(headers) == 1 else "").partition(" ")
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


def _invalid(detail: str) -> Problem:
    return Problem(400, "invalid-request", detail)


def check_content_type(content_type: str) -> None:
    if content_type.split(";")[0].strip().lower() not in JSON_TYPES:
        raise Problem(415, "unsupported-media-type", "Content-Type must be application/json")


@dataclass(frozen=True)
class Accepted:
    """A job as POST /v1/jobs answers it (its API object; its inputs are not kept)."""

    job_id: str
    status: JobStatus
    view: dict[str, Any]
    status_code: int  # 202 created, 200 an idempotent replay


def _envelope(raw: Any) -> tuple[str, dict[str, Any], str | None, dict[str, Any] | None]:
    """upstream, inputs, callback_url, metadata: the body's fields, checked by hand (no
    validator walks or copies arbitrary inputs)."""
    if not isinstance(raw, dict):
        raise _invalid("body: must be a JSON object")
    errors = [f"{k}: unknown field" for k in raw if k not in JOB_FIELDS]
    for name in ("upstream", "inputs"):
        if name not in raw:
            errors.append(f"{name}: required")
    upstream, inputs = raw.get("upstream", ""), raw.get("inputs", {})
    callback_url, metadata = raw.get("callback_url"), raw.get("metadata")
    if not isinstance(upstream, str) or not 1 <= len(upstream) <= MAX_UPSTREAM_CHARS:
        errors.append(f"upstream: must be a string of 1 to {MAX_UPSTREAM_CHARS} characters")
    if not isinstance(inputs, dict):
        errors.append("inputs: must be an object")
    if callback_url is not None and (not isinstance(callback_url, str) or not callback_url):
        errors.append("callback_url: must be a non-empty string, or absent")
    if metadata is not None and not isinstance(metadata, dict):
        errors.append("metadata: must be an object or null")
    if errors:
        raise _invalid("; ".join(errors))
    return upstream, inputs, callback_url, metadata


def _refuse_wide_integers(body: bytes | bytearray, fields: dict[str, bytes]) -> None:
    """orjson reads an integer beyond 64 bits as a float: refuse it rather than forward an
    altered value (a literal that only appears inside a string is not in the parsed fields)."""
    for token in integers_beyond_64_bits(body):
        value = float(token)
        if not math.isfinite(value):
            continue
        for name, dumped in fields.items():
            if orjson.dumps(value) in dumped:
                shown = token.decode()[:40] + ("…" if len(token) > 40 else "")
                raise _invalid(
                    f"{name}: the integer {shown} does not fit in 64 bits; send it as a string"
                )


def measure_body(body: bytes | bytearray, max_values: int) -> Shape:
    """The body's shape, measured on its bytes; 413 beyond max_values."""
    shape = measure(body, max_values, MAX_BODY_DEPTH)
    if shape.values > max_values:
        raise Problem(
            413,
            "payload-too-large",
            f"body holds more than {max_values} JSON values (array elements and object members)",
        )
    return shape


def parse_job_request(body: bytes | bytearray, shape: Shape) -> JobBody:
    """Parse a measured body once and check it by hand: its values are bounded in number
    (measure_body) and depth (64 levels for inputs and metadata)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _invalid(f"body is not valid JSON: {e}") from None
    upstream, inputs, callback_url, metadata = _envelope(raw)
    if shape.depth > MAX_BODY_DEPTH:
        field = "inputs"
        if metadata is not None and _depth(metadata) > MAX_INPUT_DEPTH:
            field = "metadata"
        raise _invalid(f"{field} nest deeper than {MAX_INPUT_DEPTH} levels")
    inputs_json, metadata_json = orjson.dumps(inputs), orjson.dumps(metadata)
    if metadata is not None and len(metadata_json) > MAX_METADATA_BYTES:
        raise _invalid(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    if shape.long_digits:
        _refuse_wide_integers(body, {"inputs": inputs_json, "metadata": metadata_json})
    canonical = {
        "upstream": upstream,
        "inputs": inputs,
        "callback_url": callback_url,
        "metadata": metadata,
    }
    body_sha = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    return JobBody(
        upstream,
        callback_url,
        inputs_json.decode(),
        metadata_json.decode(),
        body_sha.hexdigest(),
    )


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
    started_s = asyncio.get_running_loop().time()
    rt = _rt(request)
    tenant = authenticate(request)
    wait_s = preferred_wait_s(request.headers)
    idem_key = request.headers.get("idempotency-key") or None  # empty = no key
    if idem_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(idem_key):
        raise Problem(
            400, "invalid-request", "Idempotency-Key must be 1-255 visible ASCII characters"
        )
    check_content_type(request.headers.get("content-type", ""))
    listen = rt.config.listen
    async with reservation(request.app.state.body_budget) as reserved:
        body = await read_body(request, listen.max_body_bytes, listen.body_timeout_s, reserved)
        shape = measure_body(body, listen.max_json_values)
        await reserved.grow_to(body_cost_bytes(len(body), shape.values))
        req = parse_job_request(body, shape)
        del body
        accepted = await _create(rt, tenant, idem_key, req)
        del req
    return await _answer(rt, tenant, accepted, wait_s, started_s + (wait_s or 0))


async def _answer(
    rt: Runtime, tenant: Tenant, a: Accepted, wait_s: int | None, deadline_s: float
) -> Response:
    """The answer to POST /v1/jobs; with `Prefer: wait=N`, once the job is terminal (200)
    or N seconds after the request came (as without it), `Preference-Applied` saying so.
    Waiting holds neither the body's memory nor its inputs."""
    headers = {"Location": f"/v1/jobs/{a.job_id}"}
    view, status = a.view, a.status
    if wait_s is not None and status in ACTIVE:
        job = await _waited(rt, tenant, a.job_id, deadline_s)
        if job is None:  # no more requests may wait here: answer as without Prefer
            return _json(view, a.status_code, headers)
        view, status = await _view(rt, job), job.status
    if wait_s is not None:
        headers["Preference-Applied"] = f"wait={wait_s}"
    return _json(view, 200 if status in TERMINAL else a.status_code, headers)


async def _waited(rt: Runtime, tenant: Tenant, job_id: str, deadline_s: float) -> Job | None:
    """The tenant's job once terminal, or as it is at deadline_s (or when the process
    drains); None when no more requests may wait in this process."""
    waited = await JobEvents(rt).until_terminal(
        job_id, deadline_s, lambda: _owned_job(rt, tenant, job_id)
    )
    return None if waited is None else waited[0]


async def _create(rt: Runtime, tenant: Tenant, idem_key: str | None, req: JobBody) -> Accepted:
    upstream = rt.upstreams.get(req.upstream)
    if upstream is None:
        raise Problem(404, "unknown-upstream", f"no upstream named {req.upstream!r}")
    if req.callback_url is not None:
        await _check_callback(rt, req.callback_url)
    job = new_job(
        tenant.name,
        req.upstream,
        req.inputs_json,
        req.callback_url or "",
        req.metadata_json,
        upstream.config.poll.deadline_s,
    )
    lease_ms = int((upstream.config.submit_timeout_s + SUBMIT_LEASE_MARGIN_S) * 1000)
    await _admit(rt, tenant)
    limit = tenant.limits.max_jobs_in_flight
    try:
        created = await rt.store.create_job(
            tenant.name,
            job.creation_fields(),
            lease_ms,
            req.sha256,
            idem_key,
            rt.retention_ms,
            limit,
        )
    except InFlightLimit as e:
        rt.metrics.tenant_jobs_refused.labels(tenant.name, "in_flight").inc()
        raise Problem(
            429,
            "too-many-in-flight",
            f"{e.in_flight} jobs of this tenant are queued or running; its limit is {limit}",
            headers={"Retry-After": str(IN_FLIGHT_RETRY_S)},
            limit=limit,
        ) from None
    if not created.created:
        return await _idempotent_replay(rt, tenant, created.job_id, created.body_sha256, req.sha256)
    structlog.contextvars.bind_contextvars(job_id=created.job_id, upstream=req.upstream)
    rt.metrics.jobs_submitted.labels(req.upstream).inc()
    rt.metrics.tenant_jobs_created.labels(tenant.name).inc()
    job.stored(created.job_id, created.now_ms)
    return await _submit_now(rt, job, created.token)


async def _admit(rt: Runtime, tenant: Tenant) -> None:
    """The tenant's rate of job creation (limits.jobs_per_s), held across all replicas by
    the store's limiter: 429 with Retry-After beyond it."""
    limits = tenant.limits
    if limits.jobs_per_s is None:
        return
    wait_s = await rt.limiter.admit(tenant.name, limits.jobs_per_s, limits.burst_jobs)
    if wait_s > 0:
        rt.metrics.tenant_jobs_refused.labels(tenant.name, "rate").inc()
        raise Problem(
            429,
            "rate-limited",
            f"this tenant may create {limits.jobs_per_s:g} jobs per second "
            f"({limits.burst_jobs} at once); retry in {wait_s:.2f} s",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )


def redact(text: str, secret: str | None) -> str:
    """An upstream's words shown to a client, without its token: the token itself (also cut
    at the end of the excerpt) and anything after `Bearer`."""
    if secret:
        text = text.replace(secret, "[redacted]")
        for n in range(min(len(secret), len(text)), 3, -1):
            if text.endswith(secret[:n]):
                text = text[:-n] + "[redacted]"
                break
    return BEARER_RE.sub("Bearer [redacted]", text)


async def _submit_now(rt: Runtime, job: Job, token: str) -> Accepted:
    """Submit a stored job at once. Whatever goes wrong here, the job is stored and a
    worker submits it when this lease runs out: the answer is then 202 `queued`."""
    try:
        outcome = await JobEvents(rt).accepted(job, token)
    except RedisError as e:  # the job is stored; a worker submits it when the lease runs out
        rt.log.warning("store error after accepting job", error=str(e))
        outcome = None
    except Exception as e:  # likewise: the job is stored, answer 202 queued, never a 500
        rt.log.error("submit step failed after accepting job", **exception_fields(e))
        outcome = None
    if isinstance(outcome, Rejected):
        raise Problem(
            422,
            "upstream-rejected",
            f"upstream answered {outcome.status_code}",
            upstream_status=outcome.status_code,
            upstream_body=redact(outcome.message, rt.secrets.upstream_tokens.get(job.upstream)),
            job_id=job.id,
        )
    rt.log.info("job accepted", status=job.status)
    return Accepted(job.id, job.status, job_view(job), 202)


async def _idempotent_replay(
    rt: Runtime, tenant: Tenant, job_id: str, stored_sha: str, body_sha: str
) -> Accepted:
    if stored_sha != body_sha:
        raise Problem(
            409, "idempotency-conflict", "this Idempotency-Key was used with a different body"
        )
    job = await _owned_job(rt, tenant, job_id)
    return Accepted(job.id, job.status, await _view(rt, job), 200)


async def _owned_job(rt: Runtime, tenant: Tenant, job_id: str) -> Job:
    job = await rt.store.get_job(job_id) if valid_job_id(job_id) else None
    if job is None or job.tenant != tenant.name:
        raise Problem(404, "not-found", f"no job {job_id}")
    structlog.contextvars.bind_contextvars(job_id=job_id, upstream=job.upstream)
    return job


async def _reread(rt: Runtime, job_id: str) -> Job:
    job = await rt.store.get_job(job_id)
    if job is None:
        raise Problem(404, "not-found", f"no job {job_id}")
    return job


async def _view(rt: Runtime, job: Job) -> dict[str, Any]:
    if job.status != JobStatus.COMPLETED:
        return job_view(job)
    if not result_inline(job, rt.config.callbacks.max_inline_result_bytes):
        return job_view(job, None, rt.result_url(job.id))
    result = await rt.store.get_result(job.id)
    return job_view(job, orjson.loads(result) if result else None)


async def get_job(request: Request) -> Response:
    """The job; with `?wait=N`, once it is terminal or after N seconds."""
    started_s = asyncio.get_running_loop().time()
    rt = _rt(request)
    tenant, job_id = authenticate(request), request.path_params["job_id"]
    wait_s = wait_query_s(request.query_params)
    job = await _waited(rt, tenant, job_id, started_s + wait_s) if wait_s else None
    if job is None:
        job = await _owned_job(rt, tenant, job_id)
    return _json(await _view(rt, job))


async def get_attempts(request: Request) -> Response:
    rt = _rt(request)
    job = await _owned_job(rt, authenticate(request), request.path_params["job_id"])
    records = await rt.store.get_attempts(job.id)
    return _json({"job_id": job.id, "attempts": [orjson.loads(r) for r in records]})


async def redeliver(request: Request) -> Response:
    rt = _rt(request)
    tenant = authenticate(request)
    job = await _owned_job(rt, tenant, request.path_params["job_id"])
    if not job.callback_url:
        raise Problem(409, "no-callback", "the job has no callback_url; it is only read back")
    outcome = await rt.store.redeliver(job.id, tenant.name)
    if outcome == "missing":
        raise Problem(404, "not-found", f"no job {job.id}")
    if outcome == "cancelled":
        raise Problem(409, "job-cancelled", "job was cancelled; a cancelled job has no callback")
    if outcome != "ok":
        raise Problem(409, "job-not-terminal", f"job is {outcome}; nothing to deliver")
    JobEvents(rt).redelivery_scheduled(job.id)
    return _json(await _view(rt, await _reread(rt, job.id)), 202)


async def cancel(request: Request) -> Response:
    rt = _rt(request)
    tenant = authenticate(request)
    job = await _owned_job(rt, tenant, request.path_params["job_id"])
    outcome = await rt.store.cancel(job.id, tenant.name, rt.retention_ms)
    if outcome == "missing":
        raise Problem(404, "not-found", f"no job {job.id}")
    if outcome != "ok":
        raise Problem(409, "job-terminal", f"job is already {outcome}")
    rt.metrics.jobs_finished.labels(job.upstream, "cancelled").inc()
    await JobEvents(rt).cancelled(job)
    return _json(job_view(await _reread(rt, job.id)))


def _result_response(job: Job, result: str | None) -> Response:
    if job.status in ACTIVE:
        raise Problem(409, "job-not-terminal", f"job is {job.status}")
    if job.status != JobStatus.COMPLETED or result is None:
        raise Problem(404, "no-result", f"job is {job.status} and has no result")
    return Response(result.encode(), media_type="application/json")


async def get_result(request: Request) -> Response:
    rt = _rt(request)
    job = await _owned_job(rt, authenticate(request), request.path_params["job_id"])
    return _result_response(job, await rt.store.get_result(job.id))


async def get_result_by_link(request: Request) -> Response:
    rt = _rt(request)
    job_id = request.path_params["job_id"]
    expires, sig = request.query_params.getlist("expires"), request.query_params.getlist("sig")
    if (
        len(expires) != 1  # a repeated parameter: one link would have several spellings
        or len(sig) != 1
        or not valid_job_id(job_id)
        or not rt.links.verify(job_id, expires[0], sig[0], time.time())
    ):
        raise Problem(403, "invalid-link", "the link is invalid or has expired")
    job, result = await rt.store.get_job_and_result(job_id)
    if job is None:
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


JOB_ROUTES = [  # and /v1/jobs itself (joblist.py)
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
