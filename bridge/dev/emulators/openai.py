"""A local OpenAI Responses API (background mode), for development and tests.

Faithful to what the official SDK (openai 3.57.0) sends and expects, under `/v1`:
`POST /v1/responses` with `"background": true` answers the Response object at once
(`status: "queued"`, later `"in_progress"`); `GET /v1/responses/{id}` answers it with its
current status (`completed` with `output` and `usage`, `failed` with `error`, `incomplete`
with `incomplete_details`, `cancelled`); `POST /v1/responses/{id}/cancel` cancels a queued or
running background response and answers it (a finished one is answered as it is);
`DELETE /v1/responses/{id}` deletes it; `GET /v1/models` lists the models (the health check).
Without `"background": true` the create call answers when the response is done.
Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 401 for a
missing or wrong `Authorization: Bearer`, 400 for a bad body (unknown or missing parameter),
404 for an unknown path or response id, 429/503 with `Retry-After`. Background responses are
kept ~10 minutes after they finish (`future_ttl_s` defaults to 600 here), then 404.
OpenAI's webhooks are set per project, not per request: there is no per-job webhook.

`_emulate` in the body (emulator only): `{"duration_s": 2.5,
"outcome": "completed|failed|incomplete|expired", "result_bytes": N}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Any

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
    emulate_knobs,
    gate,
    json_response,
    lookup,
    new_future,
    new_state,
    ops_routes,
    unrouted,
)

__all__ = ["EmulatorSettings", "create_emulator_app"]

RETENTION_S = 600.0  # background responses are kept ~10 minutes
OUTCOMES = {"completed", "failed", "incomplete", "expired"}

# Parameters of POST /v1/responses (openai 3.57.0 ResponseCreateParams), plus `_emulate`.
CREATE_PARAMS = frozenset(
    {
        "access_programs", "background", "background_options", "context_management",
        "conversation", "image", "include", "input", "instructions", "max_output_tokens",
        "max_tool_calls", "metadata", "model", "moderation", "parallel_tool_calls",
        "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
        "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store",
        "stream", "stream_options", "temperature", "text", "tool_choice", "tools",
        "top_logprobs", "top_p", "truncation", "user", "_emulate",
    }
)  # fmt: skip

# OpenAI's wording and error type per HTTP status, for the answers every route may give.
_GATE_ERRORS = {
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


def error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> JSONResponse:
    """An error in OpenAI's shape."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def gate_error(status: int, detail: str, headers: dict[str, str] | None) -> Response:
    message, kind, code = _GATE_ERRORS.get(status, (detail, "invalid_request_error", None))
    return error(status, message, headers, code=code, kind=kind)


def not_found(request: Request, status: int) -> Response:
    """OpenAI answers an unknown method on a known path (405) like an unknown path."""
    status = 404 if status == 405 else status
    return error(status, f"Invalid URL ({request.method} {request.url.path})")


def _status(f: Future, now: float) -> str:
    if f.outcome == "cancelled":
        return "cancelled"
    if now >= f.ready_at:
        return f.outcome
    queued_until = f.created_at + (f.ready_at - f.created_at) / 4
    return "queued" if now < queued_until else "in_progress"


def _message(text: str, status: str) -> dict[str, Any]:
    content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item_id = "msg_" + secrets.token_hex(24)
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [content]}  # fmt: skip


def _usage(body: dict[str, Any], text: str) -> dict[str, Any]:
    input_tokens, output_tokens = len(str(body.get("input", "")).split()), len(text.split())
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _outcome_fields(f: Future, status: str) -> dict[str, Any]:
    """The fields that depend on how the response ended."""
    text = TEXT + ("x" * f.result_bytes if f.result_bytes else "")
    if status == "completed":
        return {"output": [_message(text, "completed")], "usage": _usage(f.inputs, text),
                "completed_at": int(f.ready_at)}  # fmt: skip
    if status == "failed":
        return {"error": {"code": "server_error", "message": "emulated inference failure"}}
    if status == "incomplete":
        return {"output": [_message(TEXT[:9], "incomplete")], "usage": _usage(f.inputs, TEXT[:9]),
                "incomplete_details": {"reason": "max_output_tokens"}}  # fmt: skip
    return {}


def response_object(f: Future, now: float) -> dict[str, Any]:
    """The Response object as OpenAI answers it, for the response's state at `now`."""
    body, status = f.inputs, _status(f, now)
    out: dict[str, Any] = {
        "id": f.id,
        "object": "response",
        "created_at": int(f.created_at),
        "status": status,
        "background": bool(body.get("background")),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": body["model"],
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": body.get("service_tier", "default"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
    }
    return out | _outcome_fields(f, status)


def check_body(body: Any) -> Response | None:
    """OpenAI's 400 for a body it would refuse, or None."""
    if not isinstance(body, dict):
        return error(400, "Invalid type for body: expected an object.", code="invalid_type")
    unknown = sorted(k for k in body if k not in CREATE_PARAMS)
    if unknown:
        return error(400, f"Unknown parameter: '{unknown[0]}'.", param=unknown[0],
                     code="unknown_parameter")  # fmt: skip
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error(400, "Missing required parameter: 'model'.", param="model",
                     code="missing_required_parameter")  # fmt: skip
    if "input" in body and not isinstance(body["input"], str | list):
        return error(400, "Invalid type for 'input': expected a string or an array of input "
                     "items.", param="input", code="invalid_type")  # fmt: skip
    for key in ("background", "store", "stream"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            return error(400, f"Invalid type for '{key}': expected a boolean.", param=key,
                         code="invalid_type")  # fmt: skip
    if body.get("stream"):
        return error(400, "This emulator does not stream; poll the background response.",
                     param="stream")  # fmt: skip
    return check_knobs(emulate_knobs(body))


def check_knobs(knobs: dict[str, Any]) -> Response | None:
    numbers_ok = all(
        isinstance(knobs.get(k, 0), int | float) for k in ("duration_s", "result_bytes")
    )
    if not numbers_ok or knobs.get("outcome", "completed") not in OUTCOMES:
        return error(400, "_emulate: duration_s and result_bytes are numbers, outcome one of "
                     f"{sorted(OUTCOMES)}.", param="_emulate")  # fmt: skip
    return None


async def create(request: Request) -> Response:
    state, refused = gate(request, "submit", refuse=gate_error)
    if refused:
        return refused
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error(400, "We could not parse the JSON body of your request. The OpenAI API "
                     "expects a JSON payload.")  # fmt: skip
    refused = check_body(body)
    if refused:
        return refused
    future = dataclasses.replace(new_future(state, body), id="resp_" + secrets.token_hex(24))
    state.add(future)
    if not body.get("background"):
        await asyncio.sleep(max(0.0, future.ready_at - time.time()))
    return json_response(response_object(future, time.time()))


def _find(request: Request, kind: str) -> tuple[EmulatorState, Future | Response]:
    """The response of the path, after gate(): or the answer that refused the request."""
    state, refused = gate(request, kind, refuse=gate_error)
    if refused:
        return state, refused
    response_id = request.path_params["response_id"]
    f = lookup(state, response_id)
    if f is None:
        return state, error(404, f"Response with id '{response_id}' not found.")
    return state, f


async def retrieve(request: Request) -> Response:
    _, found = _find(request, "poll")
    if isinstance(found, Response):
        return found
    found.polls += 1
    return json_response(response_object(found, time.time()))


async def cancel(request: Request) -> Response:
    _, found = _find(request, "cancel")
    if isinstance(found, Response):
        return found
    if not found.inputs.get("background"):
        return error(400, "Only responses created with background=true can be cancelled.")
    now = time.time()
    if _status(found, now) in ("queued", "in_progress"):
        found.outcome, found.ready_at = "cancelled", now
    return json_response(response_object(found, now))


async def delete(request: Request) -> Response:
    state, found = _find(request, "delete")
    if isinstance(found, Response):
        return found
    del state.futures[found.id]
    return json_response({"id": found.id, "object": "response", "deleted": True})


async def models(request: Request) -> Response:
    _, refused = gate(request, "health", refuse=gate_error)
    if refused:
        return refused
    model = {"id": "gpt-5-mini", "object": "model", "created": 1_700_000_000, "owned_by": "openai"}
    return json_response({"object": "list", "data": [model]})


def dev_upstream(base_url: str, token_env: str | None = None) -> dict[str, Any]:
    """This emulator, served at base_url, as an upstream of the config (the demo), without
    OpenAI's rate limit."""
    return dev_config("openai", token_env, url=f"{base_url}/v1", rate_limit={"submit_per_s": None})


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job: a Responses API request."""
    return {"model": "gpt-5-mini", "input": f"job {n}: write a haiku about otters."}


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/responses", create, methods=["POST"]),
            Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
            Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            *ops_routes(),
        ],
        exception_handlers=unrouted(not_found),
    )
    app.state.emulator = new_state(settings or EmulatorSettings(future_ttl_s=RETENTION_S))
    return app
