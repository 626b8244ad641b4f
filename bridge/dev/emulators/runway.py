"""A local Runway API (its tasks), for development and tests.

Faithful to what Runway's SDK (runwayml 5.24.0, tests/test_emulator_sdk_runway.py) sends
and expects:

- `POST /v1/{image_to_video,text_to_video,text_to_image}` with `Authorization: Bearer
  <key>`, `X-Runway-Version: 2024-11-06` and a JSON body (camelCase: `model`,
  `promptImage`, `promptText`, `ratio`, `duration`, `seed`) answers `{"id": "<uuid>"}`.
- `GET /v1/tasks/{id}` answers the task: `status` PENDING (or THROTTLED), RUNNING with
  `progress` 0..1, then SUCCEEDED with `output` (a list of URLs), FAILED with `failure`
  and `failureCode`, or CANCELLED; `createdAt`, `estimatedCost` while running, `cost`
  once terminal.
- `DELETE /v1/tasks/{id}` (204) cancels a task that is PENDING, THROTTLED or RUNNING;
  it deletes a finished one (then 404).
- `GET /v1/organization` (credit balance, tier, usage): what `health:` can call.

Errors are `{"error": "<human-readable text>"}` (Runway's docs: "a JSON response with an
error member"): 400 bad body or version header, 401 bad key, 404 unknown or deleted
task, 429/503 (with Retry-After) as injected by the settings. The exact error texts,
and that a missing X-Runway-Version is a 400, are this emulator's (unconfirmed).
Runway has no per-job webhook. Output URLs point at this emulator and need no key, like
Runway's presigned ones.

`_emulate` in the body (`duration_s`, `outcome`: completed|failed|expired,
`throttled`: true, `result_bytes`) is taken out before the body is checked.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime
from typing import Any

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
    emulate_knobs,
    gate,
    lookup,
    new_future,
    new_state,
    ops_routes,
)

__all__ = ["API_VERSION", "EmulatorSettings", "create_emulator_app"]

API_VERSION = "2024-11-06"
# what each task type needs whatever the model (runwayml 5.24.0 *_create_params.py)
REQUIRED: dict[str, tuple[str, ...]] = {
    "image_to_video": ("model", "promptImage"),
    "text_to_video": ("model", "promptText"),
    "text_to_image": ("model", "promptText"),
}
MODELS: dict[str, frozenset[str]] = {
    "image_to_video": frozenset(
        {"gen4.5", "gen4_turbo", "veo3.1", "veo3.1_fast", "kling2.5_turbo_pro", "seedance2"}
    ),
    "text_to_video": frozenset({"gen4.5", "veo3.1", "veo3.1_fast", "kling2.5_turbo_pro"}),
    "text_to_image": frozenset({"gen4_image", "gen4_image_turbo", "gemini_2.5_flash"}),
}
STRING_FIELDS = ("model", "promptText", "ratio")
MAX_PROMPT_CHARS = 1000
PENDING_SHARE = 0.25  # the first quarter of a task's time is PENDING, the rest RUNNING
FAILURE = "An unexpected error occurred while generating (emulated)."
FAILURE_CODE = "INTERNAL.BAD_OUTPUT.CODE01"
CREDITS = 10


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _version_problem(request: Request) -> Response | None:
    version = request.headers.get("x-runway-version")
    if version is None:
        return error(400, "The X-Runway-Version header is required.")
    if version != API_VERSION:
        return error(400, f"Unsupported API version {version!r}; use {API_VERSION}.")
    return None


def _guard(request: Request, kind: str) -> tuple[EmulatorState, Response | None]:
    """gate(), then the X-Runway-Version check."""
    state, refused = gate(request, kind, refuse=error)
    return state, refused or _version_problem(request)


def _body_problem(task_type: str, body: dict[str, Any]) -> str | None:
    """Why Runway would refuse this body, or None."""
    for key in REQUIRED[task_type]:
        if key not in body:
            return f"{key}: Required"
    for key in STRING_FIELDS:
        if key in body and not isinstance(body[key], str):
            return f"{key}: Expected string, received {type(body[key]).__name__}"
    if body["model"] not in MODELS[task_type]:
        return f"model: Invalid enum value '{body['model']}' for {task_type}"
    if len(body.get("promptText", "")) > MAX_PROMPT_CHARS:
        return f"promptText: String must contain at most {MAX_PROMPT_CHARS} character(s)"
    image = body.get("promptImage", "-")
    if not isinstance(image, str | list) or not image:
        return "promptImage: Expected a URL, data URI or a list of prompt images"
    duration = body.get("duration", 5)
    if not isinstance(duration, int) or isinstance(duration, bool) or not 2 <= duration <= 10:
        return "duration: Expected an integer from 2 to 10"
    return None


async def create_task(request: Request) -> Response:
    state, refused = gate(request, "submit", refuse=error)
    if refused:
        return refused
    task_type = request.path_params["task_type"]
    if task_type not in REQUIRED:
        return error(404, f"No such endpoint: POST /v1/{task_type}")
    if problem := _version_problem(request):
        return problem
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return error(400, "The request body must be a JSON object.")
    knobs = emulate_knobs(body)
    body.pop("_emulate", None)
    if why := _body_problem(task_type, body):
        return error(400, f"Validation of body failed: {why}")
    future = new_future(state, {**body, "_emulate": knobs})
    future = dataclasses.replace(future, id=str(uuid.uuid4()))
    state.add(future)
    return JSONResponse({"id": future.id})


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _task(request: Request, f: Future) -> dict[str, Any]:
    """The task as GET /v1/tasks/{id} shows it now."""
    now, base = time.time(), {"id": f.id, "createdAt": _iso(f.created_at)}
    if now < f.ready_at:
        started_at = f.created_at + PENDING_SHARE * (f.ready_at - f.created_at)
        if now < started_at:
            throttled = bool(emulate_knobs(f.inputs).get("throttled"))
            status = "THROTTLED" if throttled else "PENDING"
            return base | {"status": status, "estimatedCost": {"credits": CREDITS}}
        progress = min(0.99, (now - started_at) / max(1e-9, f.ready_at - started_at))
        return base | {
            "status": "RUNNING",
            "progress": round(progress, 3),
            "estimatedCost": {"credits": CREDITS},
        }
    if f.outcome == "cancelled":
        return base | {"status": "CANCELLED", "cost": {"credits": 0}}
    if f.outcome == "failed":
        return base | {
            "status": "FAILED",
            "failure": FAILURE,
            "failureCode": FAILURE_CODE,
            "cost": {"credits": 0},
        }
    output = str(request.url_for("runway-output", task_id=f.id, index=0))
    return base | {"status": "SUCCEEDED", "output": [output], "cost": {"credits": CREDITS}}


async def get_task(request: Request) -> Response:
    state, refused = _guard(request, "poll")
    if refused:
        return refused
    f = lookup(state, request.path_params["task_id"])
    if f is None:
        return error(404, "Task not found.")
    f.polls += 1
    return JSONResponse(_task(request, f))


async def delete_task(request: Request) -> Response:
    state, refused = _guard(request, "cancel")
    if refused:
        return refused
    f = lookup(state, request.path_params["task_id"])
    if f is None:
        return error(404, "Task not found.")
    now = time.time()
    if now < f.ready_at:  # PENDING, THROTTLED or RUNNING: cancelled
        f.outcome, f.ready_at = "cancelled", now
    else:  # finished: deleted
        del state.futures[f.id]
    return Response(status_code=204)


async def output(request: Request) -> Response:
    """The task's output file, as a presigned URL serves it (no key)."""
    state: EmulatorState = request.app.state.emulator
    state.requests["result"] += 1
    f = lookup(state, request.path_params["task_id"])
    if f is None or f.outcome != "completed" or time.time() < f.ready_at:
        return Response(b"<Error><Code>AccessDenied</Code></Error>", 403)
    f.fetches += 1
    content = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * f.result_bytes
    return Response(content, media_type="video/mp4")


async def organization(request: Request) -> Response:
    _, refused = _guard(request, "health")
    if refused:
        return refused
    return JSONResponse(
        {
            "creditBalance": 100_000,
            "tier": {"maxMonthlyCreditSpend": 1_000_000, "models": {}},
            "usage": {"models": {}},
        }
    )


def adapter() -> dict[str, Any]:
    """Runway's tasks API as the adapter of a `custom` upstream (README "Custom adapters";
    config.example.yaml's `runway` holds the same)."""
    running, completed = ["PENDING", "THROTTLED", "RUNNING"], ["SUCCEEDED"]
    return {
        "headers": {"X-Runway-Version": API_VERSION},
        "submit": {"url": "/v1/image_to_video", "id": "id"},
        "poll": {"url": "/v1/tasks/{id}"},
        "status": {"path": "status", "running": running, "completed": completed,
                   "failed": ["FAILED"], "cancelled": ["CANCELLED"], "message": "failure"},
        "error_message": "error",
        "result": {"path": "output"},
        "cancel": {"method": "DELETE", "url": "/v1/tasks/{id}"},
        "health": {"url": "/v1/organization"},
    }  # fmt: skip


def dev_upstream(base_url: str, token_env: str | None = None) -> dict[str, Any]:
    """This emulator, served at base_url, as a `custom` upstream with Runway's adapter (the
    demo; Runway's advice to poll no more often than every 5 s is left to real use)."""
    return dev_config("custom", token_env, url=base_url, adapter=adapter())


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job: an image_to_video task."""
    return {"model": "gen4_turbo", "promptImage": "https://example.com/cat.png",
            "promptText": f"job {n}", "ratio": "1280:720"}  # fmt: skip


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
            Route("/v1/tasks/{task_id}", delete_task, methods=["DELETE"]),
            Route("/v1/organization", organization, methods=["GET"]),
            Route("/v1/{task_type}", create_task, methods=["POST"]),
            Route("/_emulator/outputs/{task_id}/{index:int}.mp4", output, name="runway-output"),
            *ops_routes(),
        ]
    )
    app.state.emulator = new_state(settings)
    return app
