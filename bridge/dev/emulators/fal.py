"""A local fal queue (queue.fal.run), for development and tests.

Speaks what fal's queue API and its SDK (fal-client 1.0.3) speak, with the app at
`http://HOST:PORT/{owner}/{app}` (in place of `https://queue.fal.run/{owner}/{app}`):

- `POST /{owner}/{app}[/{subpath}][?fal_webhook=URL]` with the model input as the JSON body
  answers `{"request_id", "gateway_request_id", "status": "IN_QUEUE", "queue_position",
  "response_url", "status_url", "cancel_url"}`; the URLs leave out the subpath.
- `GET {status_url}[?logs=1]` answers 202 `{"status": "IN_QUEUE", "queue_position"}` or
  `{"status": "IN_PROGRESS", "logs"}`, then 200 `{"status": "COMPLETED", "logs", "metrics"}`;
  a failed request is COMPLETED with `error` (and `error_type`).
- `GET {response_url}` answers the model's output, or the app's error status with
  `{"detail": ...}` for a failed request; 400 before it is done.
- `PUT {cancel_url}` answers 202 `{"status": "CANCELLATION_REQUESTED"}` (the request then
  ends COMPLETED with error "Request cancelled", its result 499), 400
  `{"status": "ALREADY_COMPLETED"}`, or 404 `{"status": "NOT_FOUND"}`.
- `fal_webhook`: when the request ends, `{"request_id", "gateway_request_id", "status":
  "OK"|"ERROR", "payload", "error"}` is POSTed there (a non-2xx answer is retried).
- Auth: `Authorization: Key <key>`. Errors are `{"detail": "..."}`. Results are kept 1 hour
  after completion (`future_ttl_s`), 6 minutes when the result is 10 KB or more; then 404.

Per request, `_emulate` in the input: `{"duration_s", "queue_s" (time IN_QUEUE, default a
quarter of the duration), "outcome": "completed|failed|expired", "error", "error_type",
"status_code" (of a failed result, default 500), "result_bytes", "lose_webhook" (true: the
webhook is never sent; else lost at random with the setting `webhook_loss_rate`)}`. An
input that is not a JSON object fails the way a fal app's validation does (422).
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
    problem,
    spawn,
    unrouted,
    webhook_lost,
)

__all__ = ["EmulatorSettings", "EmulatorState", "create_emulator_app"]

RETENTION_S = 3600.0  # results are kept 1 hour after completion ...
LARGE_RESULT_BYTES = 10 * 1024  # ... but only 6 minutes when they are 10 KB or more
LARGE_RETENTION_S = 360.0
QUEUE_SHARE = 0.25  # share of a request's duration spent IN_QUEUE unless _emulate.queue_s
WEBHOOK_ATTEMPTS = 10  # retry policy per fal's docs as reported (unconfirmed)
WEBHOOK_RETRY_S = 15.0
OK_2XX = tuple(range(200, 300))
CANCELLED_ERROR = "Request cancelled"
VALIDATION_DETAIL = [
    {"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}
]


@dataclass
class FalRequest(Future):
    app_path: str = ""  # owner/app (no subpath), as in the request URLs
    started_at: float = 0.0
    webhook: str | None = None
    error: str = "emulated app failure"
    error_type: str | None = None
    status_code: int = 500  # of the result of a failed request
    detail: Any = None  # the failed result's detail (the error text unless set)


def key_auth(state: EmulatorState, request: Request) -> bool:
    """`Authorization: Key <key>` when the emulator has a token."""
    token = state.settings.token
    return token is None or request.headers.get("authorization") == f"Key {token}"


def _phase(req: FalRequest, now: float) -> str:
    if now < req.started_at and req.outcome != "cancelled":
        return "IN_QUEUE"
    if now < req.ready_at:
        return "IN_PROGRESS"
    return "COMPLETED"


def _failed(req: FalRequest) -> bool:
    return req.outcome in ("failed", "cancelled")


def _output(req: FalRequest) -> dict[str, Any]:
    image = {"url": f"https://v3.fal.media/files/{req.id}.png", "width": 8, "height": 8}
    return echo_output(req, images=[image])


def _retention_s(state: EmulatorState, req: FalRequest) -> float:
    large = req.result_bytes >= LARGE_RESULT_BYTES
    ttl = state.settings.future_ttl_s
    return min(ttl, LARGE_RETENTION_S) if large else ttl


def _find(state: EmulatorState, request: Request) -> FalRequest | None:
    req = lookup(state, request.path_params["request_id"])
    app_path = f"{request.path_params['owner']}/{request.path_params['app']}"
    if not isinstance(req, FalRequest) or req.app_path != app_path:
        return None
    if time.time() > req.ready_at + _retention_s(state, req):
        return None
    return req


def _urls(request: Request, req: FalRequest) -> dict[str, str]:
    owner, app = req.app_path.split("/")
    response_url = str(request.url_for("fal-result", owner=owner, app=app, request_id=req.id))
    return {
        "response_url": response_url,
        "status_url": f"{response_url}/status",
        "cancel_url": f"{response_url}/cancel",
    }


def _new_request(
    state: EmulatorState, app_path: str, inputs: Any, webhook: str | None
) -> FalRequest:
    base = new_future(state, inputs)
    knobs = emulate_knobs(inputs)
    queue_s = float(knobs.get("queue_s", QUEUE_SHARE * (base.ready_at - base.created_at)))
    req = FalRequest(
        **(vars(base) | {"id": str(uuid.uuid4())}),
        app_path=app_path,
        started_at=min(base.created_at + max(0.0, queue_s), base.ready_at),
        webhook=webhook,
        error=str(knobs.get("error", "emulated app failure")),
        error_type=knobs.get("error_type"),
        status_code=int(knobs.get("status_code", 500)),
    )
    if not isinstance(inputs, dict):  # the app's input model refuses it
        req.outcome, req.status_code, req.detail = "failed", 422, VALIDATION_DETAIL
        req.error, req.ready_at = "Unprocessable Entity", req.started_at
    return req


def _failed_result(req: FalRequest) -> tuple[int, Any]:
    if req.outcome == "cancelled":
        return 499, {"detail": "Request cancelled by the client."}
    return req.status_code, {"detail": req.detail if req.detail is not None else req.error}


async def submit(request: Request) -> Response:
    state, refused = gate(request, "submit", auth=key_auth)
    if refused:
        return refused
    webhook = request.query_params.get("fal_webhook")
    if webhook is not None and urlsplit(webhook).scheme not in ("http", "https"):
        return problem(422, "fal_webhook must be an http(s) URL")
    try:
        inputs = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return problem(400, "request body is not valid JSON")
    p = request.path_params
    req = _new_request(state, f"{p['owner']}/{p['app']}", inputs, webhook)
    state.add(req)
    if webhook and not webhook_lost(state, inputs):
        spawn(state, _send_webhook(state, req))
    body = {"request_id": req.id, "gateway_request_id": req.id, "status": "IN_QUEUE"}
    return JSONResponse(body | {"queue_position": 0} | _urls(request, req))


def _logs_wanted(request: Request) -> bool:
    return request.query_params.get("logs", "0").lower() in ("1", "true")


def _status_body(request: Request, req: FalRequest, now: float) -> dict[str, Any]:
    phase = _phase(req, now)
    logs: list[dict[str, Any]] | None = None
    if _logs_wanted(request):
        logs = [] if phase == "IN_QUEUE" else [{"message": "emulated run", "level": "INFO"}]
    body: dict[str, Any] = {"status": phase, "response_url": _urls(request, req)["response_url"]}
    if phase == "IN_QUEUE":
        return body | {"queue_position": 0}
    body["logs"] = logs
    if phase == "COMPLETED":
        body["metrics"] = {"inference_time": round(max(0.0, req.ready_at - req.started_at), 3)}
        if _failed(req):
            error_type = "request_cancelled" if req.outcome == "cancelled" else req.error_type
            body["error"] = CANCELLED_ERROR if req.outcome == "cancelled" else req.error
            if error_type:
                body["error_type"] = error_type
    return body


async def status(request: Request) -> Response:
    state, refused = gate(request, "poll", auth=key_auth)
    if refused:
        return refused
    req = _find(state, request)
    if req is None:
        return problem(404, "Request not found")
    req.polls += 1
    body = _status_body(request, req, time.time())
    code = 200 if body["status"] == "COMPLETED" else 202
    return JSONResponse(body, status_code=code)


async def result(request: Request) -> Response:
    state, refused = gate(request, "result", auth=key_auth)
    if refused:
        return refused
    req = _find(state, request)
    if req is None:
        return problem(404, "Request not found")
    if _phase(req, time.time()) != "COMPLETED":
        return problem(400, "Request is still in progress")
    req.fetches += 1
    if _failed(req):
        code, body = _failed_result(req)
        return JSONResponse(body, status_code=code)
    return Response(orjson.dumps(_output(req)), media_type="application/json")


async def cancel(request: Request) -> Response:
    state, refused = gate(request, "cancel", auth=key_auth)
    if refused:
        return refused
    req = _find(state, request)
    if req is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    now = time.time()
    if _phase(req, now) == "COMPLETED":
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
    req.outcome, req.ready_at = "cancelled", now
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)


def webhook_payload(req: FalRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": req.id, "gateway_request_id": req.id}
    if not _failed(req):
        return body | {"status": "OK", "payload": _output(req), "error": None}
    code, detail = _failed_result(req)
    return body | {"status": "ERROR", "payload": detail, "error": f"Invalid status code: {code}"}


async def _send_webhook(state: EmulatorState, req: FalRequest) -> None:
    await asyncio.sleep(max(0.0, req.ready_at - time.time()))
    if req.webhook is None:
        return
    payload = webhook_payload(req)
    await post_webhook(state, req.webhook, payload, WEBHOOK_ATTEMPTS, WEBHOOK_RETRY_S, OK_2XX)


def _http_error(request: Request, code: int) -> Response:
    return problem(code, "Not Found" if code == 404 else "Method Not Allowed")


def dev_upstream(base_url: str, token_env: str | None = None) -> dict[str, Any]:
    """This emulator, served at base_url, as an upstream of the config (the demo)."""
    return dev_config(
        "fal", token_env, url=f"{base_url}/fal-ai/echo", health_url=f"{base_url}/healthz"
    )


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job."""
    return {"prompt": f"job {n}"}


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    requests = "/{owner}/{app}/requests/{request_id}"
    app = Starlette(
        lifespan=lifespan,
        routes=[
            *ops_routes(),
            Route(f"{requests}/status", status),
            Route(f"{requests}/cancel", cancel, methods=["PUT"]),
            Route(requests, result, name="fal-result"),
            Route("/{owner}/{app}", submit, methods=["POST"]),
            Route("/{owner}/{app}/{subpath:path}", submit, methods=["POST"]),
        ],
        exception_handlers=unrouted(_http_error),
    )
    app.state.emulator = new_state(settings or EmulatorSettings(future_ttl_s=RETENTION_S))
    return app
