"""A local Stability AI v2beta API (its asynchronous generations), for development and tests.

Stability has no official Python SDK for v2beta (stability-sdk speaks the older gRPC
API), so tests/test_emulator_sdk_stability.py drives this emulator with plain httpx as
Stability's documentation shows. What it speaks:

- `POST /v2beta/stable-image/upscale/creative` (fields `image` (a file) and `prompt`
  required; `negative_prompt`, `output_format` jpeg|png|webp, `seed`, `creativity`) and
  `POST /v2beta/image-to-video` (`image` required; `cfg_scale`, `motion_bucket_id`,
  `seed`), each `multipart/form-data` with `Authorization: Bearer <key>`, answer 200
  `{"id": "<64 hex characters>"}`.
- `GET /v2beta/results/{id}` answers 202 `{"id", "status": "in-progress"}` until the
  generation is done, then 200 with the result: with `Accept: application/json`
  `{"image"|"video": <base64>, "finish_reason": "SUCCESS"|"CONTENT_FILTERED", "seed"}`,
  otherwise the bytes themselves (headers `finish-reason`, `seed`). 404 for an unknown
  id or once the result is gone (Stability keeps results 24 h; here future_ttl_s).
- `GET /v1/user/balance` (`{"credits"}`): what `health:` can call.

Errors are Stability's `{"id": <error id>, "name": <kind>, "errors": [<texts>]}`: 400
bad_request (not multipart, a field missing or out of range), 401 unauthorized, 403
content_moderation, 404 not_found, 413 payload_too_large, 429 rate_limit_exceeded and
503 (Retry-After) as injected by the settings.

`_emulate` (a form field holding JSON: `duration_s`, `outcome`, `result_bytes`) sets the
generation's time and outcome: completed, filtered (200 with finish_reason
CONTENT_FILTERED), failed (the result answers 403 content_moderation, as Stability's
result endpoints document for a flagged generation; unconfirmed for v2beta/results) or
expired (404). Stability has no cancel and no webhook.

Multipart bodies are read with the standard library's email parser (no extra
dependency for a development tool).
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.dev.emulators.common import (
    EmulatorSettings,
    Future,
    gate,
    lookup,
    new_future,
    new_state,
    ops_routes,
)

__all__ = ["EmulatorSettings", "create_emulator_app"]

MAX_BODY_BYTES = 10 * 1024 * 1024
ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "content_moderation",
    404: "not_found",
    413: "payload_too_large",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "service_unavailable",
}
MODERATION = (
    "Your request was flagged by our content moderation system, as a result your request "
    "was denied and you were not charged."
)
# a 1x1 transparent PNG: the emulated image
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
MP4 = b"\x00\x00\x00\x18ftypmp42"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    kind: str  # "image" or "video": the result's field and media type
    required: tuple[str, ...]
    numbers: dict[str, tuple[float, float]]  # numeric fields and their ranges


ENDPOINTS = {
    "stable-image/upscale/creative": Endpoint(
        "image", ("image", "prompt"), {"seed": (0, 4294967294), "creativity": (0, 0.5)}
    ),
    "image-to-video": Endpoint(
        "video",
        ("image",),
        {"seed": (0, 4294967294), "cfg_scale": (0, 10), "motion_bucket_id": (1, 255)},
    ),
}
OUTPUT_FORMATS = ("jpeg", "png", "webp")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    name = ERROR_NAMES.get(status, "error")
    body = {"id": secrets.token_hex(16), "name": name, "errors": [message]}
    return JSONResponse(body, status_code=status, headers=headers)


def _form(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]] | str:
    """The fields and files of a multipart/form-data body, or why it is not one."""
    if not content_type.startswith("multipart/form-data"):
        return "content-type: must be multipart/form-data"
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        return "body: not a valid multipart/form-data body"
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            return "body: a part has no name"
        if part.get_filename() is not None:
            files[name] = payload
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, files


def _fields_problem(endpoint: Endpoint, fields: dict[str, str], files: dict[str, bytes]) -> str:
    """Why Stability would refuse these fields ("" if it would not)."""
    for key in endpoint.required:
        if key not in fields and key not in files:
            return f"{key}: is required"
    if "image" in fields:
        return "image: must be a file (binary), not a text field"
    if not files.get("image"):
        return "image: is empty"
    for key, (lo, hi) in endpoint.numbers.items():
        if key in fields:
            try:
                ok = lo <= float(fields[key]) <= hi
            except ValueError:
                ok = False
            if not ok:
                return f"{key}: must be a number from {lo} to {hi}"
    if fields.get("output_format", "png") not in OUTPUT_FORMATS:
        return f"output_format: must be one of {', '.join(OUTPUT_FORMATS)}"
    return ""


def _knobs(fields: dict[str, str]) -> dict[str, Any]:
    try:
        knobs = orjson.loads(fields.pop("_emulate", "{}"))
    except orjson.JSONDecodeError:
        return {}
    return knobs if isinstance(knobs, dict) else {}


async def generate(request: Request) -> Response:
    state, refused = gate(request, "submit", refuse=error)
    if refused:
        return refused
    endpoint = ENDPOINTS.get(request.path_params["endpoint"])
    if endpoint is None:
        return error(404, f"No such endpoint: POST {request.url.path}")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return error(413, f"body: must be at most {MAX_BODY_BYTES} bytes")
    form = _form(request.headers.get("content-type", ""), body)
    if isinstance(form, str):
        return error(400, form)
    fields, files = form
    knobs = _knobs(fields)
    if why := _fields_problem(endpoint, fields, files):
        return error(400, why)
    inputs = {**fields, "kind": endpoint.kind, "_emulate": knobs}
    future = dataclasses.replace(new_future(state, inputs), id=secrets.token_hex(32))
    state.add(future)
    return JSONResponse({"id": future.id})


def _finished(request: Request, f: Future) -> Response:
    kind = f.inputs["kind"]
    content = (PNG if kind == "image" else MP4) + b"\x00" * f.result_bytes
    finish = "CONTENT_FILTERED" if f.outcome == "filtered" else "SUCCESS"
    seed = int(f.inputs.get("seed") or 0) or 1234567
    if "application/json" in request.headers.get("accept", ""):
        payload = {kind: base64.b64encode(content).decode(), "finish_reason": finish, "seed": seed}
        return Response(orjson.dumps(payload), media_type="application/json")
    media = "image/png" if kind == "image" else "video/mp4"
    return Response(content, media_type=media, headers={"finish-reason": finish, "seed": str(seed)})


async def result(request: Request) -> Response:
    state, refused = gate(request, "poll", refuse=error)
    if refused:
        return refused
    f = lookup(state, request.path_params["generation_id"])
    if f is None:
        return error(404, f"generation {request.path_params['generation_id']!r} not found")
    f.polls += 1
    if time.time() < f.ready_at:
        return JSONResponse({"id": f.id, "status": "in-progress"}, status_code=202)
    if f.outcome == "failed":
        return error(403, MODERATION)
    f.fetches += 1
    return _finished(request, f)


async def balance(request: Request) -> Response:
    _, refused = gate(request, "health", refuse=error)
    if refused:
        return refused
    return JSONResponse({"credits": 1000.0})


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v2beta/results/{generation_id}", result, methods=["GET"]),
            Route("/v2beta/{endpoint:path}", generate, methods=["POST"]),
            Route("/v1/user/balance", balance, methods=["GET"]),
            *ops_routes(),
        ]
    )
    app.state.emulator = new_state(settings)
    return app
