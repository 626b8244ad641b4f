"""A local async-inference API speaking the `octoai` protocol, for development and tests.

Faithful to what OctoAI's SDK (octoai-sdk 0.10.1) expects: `POST <endpoint>` with
`X-OctoAI-Async: 1` answers `{"response_id", "poll_url"}`; `GET poll_url`
answers `{"status", "response_url"}`; `GET response_url` answers the result.
Durations and failures are configurable globally (`EmulatorSettings`) and per
request through an `_emulate` object in the inputs:
`{"duration_s": 2.5, "outcome": "completed|failed|expired", "result_bytes": N}`.
"""

from __future__ import annotations

import asyncio
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
    echo_output,
    gate,
    lookup,
    new_future,
    new_state,
    ops_routes,
    problem,
)

__all__ = ["EmulatorSettings", "EmulatorState", "create_emulator_app"]


def _result(f: Future) -> dict[str, Any]:
    return echo_output(f, response={"segments": [{"text": TEXT}]})


async def infer(request: Request) -> Response:
    state, refused = gate(request, "submit")
    if refused:
        return refused
    try:
        inputs = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return problem(400, "body is not JSON")
    if not isinstance(inputs, dict):
        return problem(422, "inputs must be a JSON object")
    future = new_future(state, inputs)
    if request.headers.get("x-octoai-async") != "1":
        await asyncio.sleep(max(0.0, future.ready_at - time.time()))
        return JSONResponse(_result(future))
    state.add(future)
    poll_url = str(request.url_for("emulator-future", response_id=future.id))
    return JSONResponse({"response_id": future.id, "poll_url": poll_url}, status_code=202)


async def future_status(request: Request) -> Response:
    state, refused = gate(request, "poll")
    if refused:
        return refused
    f = lookup(state, request.path_params["response_id"])
    if f is None:
        return problem(404, "future not found")
    f.polls += 1
    if time.time() < f.ready_at:
        return JSONResponse({"status": "running", "response_url": None})
    if f.outcome == "failed":
        return JSONResponse({"status": "failed", "error": "emulated inference failure"})
    url = str(request.url_for("emulator-result", response_id=f.id))
    return JSONResponse({"status": "completed", "response_url": url})


async def future_result(request: Request) -> Response:
    state, refused = gate(request, "result")
    if refused:
        return refused
    f = lookup(state, request.path_params["response_id"])
    if f is None or time.time() < f.ready_at or f.outcome != "completed":
        return problem(404, "result not found")
    f.fetches += 1
    return Response(orjson.dumps(_result(f)), media_type="application/json")


def dev_upstream(
    base_url: str, token_env: str | None = None, model: str = "echo"
) -> dict[str, Any]:
    """This emulator, served at base_url, as an upstream of the config (dev mode, demo)."""
    return dev_config(
        "octoai", token_env, url=f"{base_url}/infer/{model}", health_url=f"{base_url}/healthz"
    )


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job."""
    return {"prompt": f"job {n}"}


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/infer/{model}", infer, methods=["POST"]),
            Route("/futures/{response_id}", future_status, name="emulator-future"),
            Route("/futures/{response_id}/result", future_result, name="emulator-result"),
            *ops_routes(),
        ]
    )
    app.state.emulator = new_state(settings)
    return app
