"""A local RunPod serverless endpoint (queue-based), for development and tests.

Speaks what RunPod's API and its SDK (runpod 1.12.0, `runpod.Endpoint`) speak, under the
base `http://HOST:PORT/v2` (the SDK's `RUNPOD_ENDPOINT_BASE_URL`):

- `POST /v2/{endpoint_id}/run` with `{"input": {...}, "webhook"?, "policy"?, "s3Config"?}`
  answers `{"id", "status": "IN_QUEUE"}`; `POST /v2/{endpoint_id}/runsync[?wait=ms]` waits.
- `GET /v2/{endpoint_id}/status/{id}` answers `{"id", "status", "delayTime"?,
  "executionTime"?, "output"?, "error"?}`: IN_QUEUE, IN_PROGRESS, then COMPLETED (output
  inline), FAILED (error text), TIMED_OUT or CANCELLED; 404 once the job is gone (results
  are kept 30 minutes after completion, `future_ttl_s` here).
- `POST /v2/{endpoint_id}/cancel/{id}` answers `{"id", "status"}` (CANCELLED unless done).
- `GET /v2/{endpoint_id}/health` answers the job and worker counts.
- `webhook`: when the job ends (COMPLETED, FAILED, TIMED_OUT) the status object plus
  `input` and `webhook` is POSTed there; a non-200 answer is retried 2 more times, 10 s apart.
- Auth: `Authorization: Bearer <key>` (the SDK) or the bare key (the docs' curl examples).
  Errors are `{"error": "..."}` with the HTTP status (the body shape is unconfirmed).

Per job, `_emulate` in the input: `{"duration_s", "queue_s" (time IN_QUEUE, default a
quarter of the duration), "outcome": "completed|failed|timed_out|expired", "error" (the
FAILED text), "result_bytes", "lose_webhook" (true: the webhook is never sent; else lost at
random with the setting `webhook_loss_rate`)}`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.dev.emulators.common import (
    TEXT,
    EmulatorSettings,
    EmulatorState,
    Future,
    dev_config,
    echo_output,
    emulate_knobs,
    gate,
    lifespan,
    lookup,
    new_future,
    new_state,
    ops_routes,
    post_webhook,
    spawn,
    unrouted,
    webhook_lost,
)

__all__ = ["EmulatorSettings", "EmulatorState", "create_emulator_app"]

RETENTION_S = 30 * 60.0  # /run results are kept 30 minutes after completion
MAX_RUN_BYTES = 10 * 1024 * 1024  # /run payload limit
QUEUE_SHARE = 0.25  # share of a job's duration spent IN_QUEUE unless _emulate.queue_s
WEBHOOK_ATTEMPTS = 3  # "retries up to 2 more times with a 10-second delay"
WEBHOOK_RETRY_S = 10.0
RUNSYNC_WAIT_MS = (1000, 90_000, 300_000)  # min, default, max of ?wait=
REQUEST_KEYS = frozenset({"input", "webhook", "policy", "s3Config"})
TERMINAL = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"})
OUTCOME_STATUS = {
    "completed": "COMPLETED",
    "expired": "COMPLETED",  # it did complete; its record is gone when asked
    "failed": "FAILED",
    "timed_out": "TIMED_OUT",
    "cancelled": "CANCELLED",
}
DEFAULT_ERROR = "emulated handler failure"


@dataclass
class RunpodJob(Future):
    endpoint_id: str = ""
    started_at: float = 0.0
    webhook: str | None = None
    error: str = DEFAULT_ERROR


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def authorized(state: EmulatorState, request: Request) -> bool:
    """The key as `Bearer <key>` (the SDK) or bare (RunPod's curl examples)."""
    token = state.settings.token
    return token is None or request.headers.get("authorization") in (f"Bearer {token}", token)


def status_of(job: RunpodJob, now: float) -> str:
    if job.outcome == "cancelled":
        return "CANCELLED"
    if now < job.started_at:
        return "IN_QUEUE"
    if now < job.ready_at:
        return "IN_PROGRESS"
    return OUTCOME_STATUS.get(job.outcome, "FAILED")


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _output(job: RunpodJob) -> dict[str, Any]:
    return echo_output(job, text=TEXT)


def job_body(job: RunpodJob, now: float) -> dict[str, Any]:
    """The status object, as GET /status answers it."""
    status = status_of(job, now)
    body: dict[str, Any] = {"id": job.id, "status": status}
    started = now >= job.started_at and job.started_at <= job.ready_at
    if started:
        body["delayTime"] = _ms(job.started_at - job.created_at)
    if started and status in TERMINAL:
        body["executionTime"] = _ms(job.ready_at - job.started_at)
    if status == "COMPLETED":
        body["output"] = _output(job)
    elif status == "FAILED":
        body["error"] = job.error
    return body


def _check_request(body: Any) -> str | None:
    """What is wrong with a /run body, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if "input" not in body:
        return "request body must contain an 'input' field"
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        return f"unknown request fields: {', '.join(unknown)}"
    webhook = body.get("webhook")
    if webhook is not None and not (
        isinstance(webhook, str) and urlsplit(webhook).scheme in ("http", "https")
    ):
        return "webhook must be an http(s) URL"
    if "policy" in body and not isinstance(body["policy"], dict):
        return "policy must be an object"
    return None


async def _read_request(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
    raw = await request.body()
    if len(raw) > MAX_RUN_BYTES:
        return None, error(413, "payload exceeds 10 MB")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, error(400, "request body is not valid JSON")
    problem_text = _check_request(body)
    if problem_text:
        return None, error(400, problem_text)
    return body, None


def _new_job(state: EmulatorState, endpoint_id: str, body: dict[str, Any]) -> RunpodJob:
    base = new_future(state, body["input"])
    knobs = emulate_knobs(body["input"])
    queue_s = float(knobs.get("queue_s", QUEUE_SHARE * (base.ready_at - base.created_at)))
    fields = vars(base) | {"id": f"{uuid.uuid4()}-u1"}
    return RunpodJob(
        **fields,
        endpoint_id=endpoint_id,
        started_at=min(base.created_at + max(0.0, queue_s), base.ready_at),
        webhook=body.get("webhook"),
        error=str(knobs.get("error", DEFAULT_ERROR)),
    )


async def _send_webhook(state: EmulatorState, job: RunpodJob) -> None:
    await asyncio.sleep(max(0.0, job.ready_at - time.time()))
    if job.outcome == "cancelled" or job.webhook is None:
        return
    payload = job_body(job, time.time()) | {"input": job.inputs, "webhook": job.webhook}
    await post_webhook(state, job.webhook, payload, WEBHOOK_ATTEMPTS, WEBHOOK_RETRY_S)


async def _submit(request: Request, kind: str) -> tuple[EmulatorState, RunpodJob | Response]:
    state, refused = gate(request, kind, auth=authorized, refuse=error)
    if refused:
        return state, refused
    body, bad = await _read_request(request)
    if bad or body is None:
        return state, bad or error(400, "bad request")
    job = _new_job(state, request.path_params["endpoint_id"], body)
    state.add(job)
    if job.webhook and not webhook_lost(state, job.inputs):
        spawn(state, _send_webhook(state, job))
    return state, job


async def run(request: Request) -> Response:
    _, job = await _submit(request, "submit")
    if isinstance(job, Response):
        return job
    return JSONResponse({"id": job.id, "status": "IN_QUEUE"})


async def runsync(request: Request) -> Response:
    lo, default, hi = RUNSYNC_WAIT_MS
    try:
        wait_ms = int(request.query_params.get("wait", default))
    except ValueError:
        return error(400, "wait must be an integer (milliseconds)")
    _, job = await _submit(request, "submit")
    if isinstance(job, Response):
        return job
    wait_s = min(max(wait_ms, lo), hi) / 1000
    await asyncio.sleep(min(wait_s, max(0.0, job.ready_at - time.time())))
    return JSONResponse(job_body(job, time.time()))


def _find(state: EmulatorState, request: Request) -> RunpodJob | None:
    job = lookup(state, request.path_params["job_id"])
    if not isinstance(job, RunpodJob) or job.endpoint_id != request.path_params["endpoint_id"]:
        return None
    return job


async def status(request: Request) -> Response:
    state, refused = gate(request, "poll", auth=authorized, refuse=error)
    if refused:
        return refused
    job = _find(state, request)
    if job is None:
        return error(404, "job not found")
    job.polls += 1
    body = job_body(job, time.time())
    job.fetches += "output" in body
    return Response(orjson.dumps(body), media_type="application/json")


async def cancel(request: Request) -> Response:
    state, refused = gate(request, "cancel", auth=authorized, refuse=error)
    if refused:
        return refused
    job = _find(state, request)
    if job is None:
        return error(404, "job not found")
    now = time.time()
    if status_of(job, now) not in TERMINAL:
        job.outcome, job.ready_at = "cancelled", now
    return JSONResponse({"id": job.id, "status": status_of(job, now)})


async def endpoint_health(request: Request) -> Response:
    state, refused = gate(request, "health", auth=authorized, refuse=error)
    if refused:
        return refused
    now, endpoint_id = time.time(), request.path_params["endpoint_id"]
    counts = {"COMPLETED": 0, "FAILED": 0, "IN_PROGRESS": 0, "IN_QUEUE": 0}
    for job in state.futures.values():
        if isinstance(job, RunpodJob) and job.endpoint_id == endpoint_id:
            key = status_of(job, now)
            counts[key] = counts.get(key, 0) + 1
    running = counts["IN_PROGRESS"]
    return JSONResponse(
        {
            "jobs": {
                "completed": counts["COMPLETED"],
                "failed": counts["FAILED"],
                "inProgress": running,
                "inQueue": counts["IN_QUEUE"],
                "retried": 0,
            },
            "workers": {"idle": 0 if running else 1, "running": running},
        }
    )


def _http_error(request: Request, status: int) -> Response:
    return error(status, "not found" if status == 404 else "method not allowed")


def dev_upstream(base_url: str, token_env: str | None = None) -> dict[str, Any]:
    """This emulator, served at base_url, as an upstream of the config (the demo)."""
    return dev_config("runpod", token_env, url=f"{base_url}/v2/dev-endpoint")


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job."""
    return {"prompt": f"job {n}"}


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    base = "/v2/{endpoint_id}"
    app = Starlette(
        lifespan=lifespan,
        routes=[
            Route(f"{base}/run", run, methods=["POST"]),
            Route(f"{base}/runsync", runsync, methods=["POST"]),
            Route(f"{base}/status/{{job_id}}", status),
            Route(f"{base}/cancel/{{job_id}}", cancel, methods=["POST"]),
            Route(f"{base}/health", endpoint_health),
            *ops_routes(),
        ],
        exception_handlers=unrouted(_http_error),
    )
    app.state.emulator = new_state(settings or EmulatorSettings(future_ttl_s=RETENTION_S))
    return app
