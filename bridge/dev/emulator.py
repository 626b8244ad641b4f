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
import math
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Z_95 = 1.6448536269514722


@dataclass
class EmulatorSettings:
    duration_s: float = 1.0
    duration_p95_s: float | None = None  # set → log-normal with median duration_s
    fail_rate: float = 0.0  # futures that end "failed"
    expire_rate: float = 0.0  # futures that answer 404 once done
    submit_503_rate: float = 0.0
    poll_503_rate: float = 0.0
    poll_429_rate: float = 0.0
    retry_after_s: int = 1
    healthy: bool = True
    token: str | None = None  # when set, requests need "Authorization: Bearer <token>"
    future_ttl_s: float = 3600.0
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise KeyError(key)
            setattr(self, key, value)


@dataclass
class Future:
    id: str
    inputs: Any
    created_at: float
    ready_at: float
    outcome: str
    result_bytes: int = 0
    polls: int = 0
    fetches: int = 0


@dataclass
class EmulatorState:
    settings: EmulatorSettings
    futures: dict[str, Future] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rng: random.Random = field(default_factory=random.Random)

    def draw_duration_s(self) -> float:
        s = self.settings
        if s.duration_p95_s is None or s.duration_p95_s <= s.duration_s:
            return s.duration_s
        sigma = math.log(s.duration_p95_s / s.duration_s) / Z_95
        return s.duration_s * math.exp(self.rng.gauss(0.0, sigma))

    def draw_outcome(self) -> str:
        r = self.rng.random()
        if r < self.settings.fail_rate:
            return "failed"
        if r < self.settings.fail_rate + self.settings.expire_rate:
            return "expired"
        return "completed"

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def max_per_window(self, kind: str, window_s: float = 1.0) -> int:
        """The most requests of one kind seen in any window of window_s (sliding)."""
        times, best, lo = sorted(self.times[kind]), 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window_s:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "max_per_s": {k: self.max_per_window(k) for k in self.times},
            "futures": {
                f.id: {"ready_at": f.ready_at, "polls": f.polls, "outcome": f.outcome}
                for f in self.futures.values()
            },
        }


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _authorized(state: EmulatorState, request: Request) -> bool:
    token = state.settings.token
    return token is None or request.headers.get("authorization") == f"Bearer {token}"


def _result(f: Future) -> dict[str, Any]:
    text = "She sells seashells by the seashore"
    out: dict[str, Any] = {"response": {"segments": [{"text": text}]}, "echo": f.inputs}
    if f.result_bytes:
        out["padding"] = "x" * f.result_bytes
    return out


def _new_future(state: EmulatorState, inputs: Any) -> Future:
    knobs = inputs.get("_emulate", {}) if isinstance(inputs, dict) else {}
    knobs = knobs if isinstance(knobs, dict) else {}
    duration = float(knobs.get("duration_s", state.draw_duration_s()))
    now = time.time()
    return Future(
        id=secrets.token_hex(8),
        inputs=inputs,
        created_at=now,
        ready_at=now + duration,
        outcome=str(knobs.get("outcome", state.draw_outcome())),
        result_bytes=int(knobs.get("result_bytes", 0)),
    )


def _retry(state: EmulatorState, status: int) -> JSONResponse:
    headers = {"Retry-After": str(state.settings.retry_after_s)}
    return _problem(status, "try again later", headers)


def _gate(
    request: Request, kind: str, rate_503: float = 0.0, rate_429: float = 0.0
) -> tuple[EmulatorState, Response | None]:
    """Count the request, check the token and inject the configured failures."""
    state: EmulatorState = request.app.state.emulator
    state.requests[kind] += 1
    state.times[kind].append(time.monotonic())
    if not _authorized(state, request):
        return state, _problem(401, "missing or invalid token")
    if state.chance(rate_503):
        return state, _retry(state, 503)
    if state.chance(rate_429):
        return state, _retry(state, 429)
    return state, None


async def infer(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    state, refused = _gate(request, "submit", state.settings.submit_503_rate)
    if refused:
        return refused
    try:
        inputs = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _problem(400, "body is not JSON")
    if not isinstance(inputs, dict):
        return _problem(422, "inputs must be a JSON object")
    future = _new_future(state, inputs)
    if request.headers.get("x-octoai-async") != "1":
        await asyncio.sleep(max(0.0, future.ready_at - time.time()))
        return JSONResponse(_result(future))
    state.futures[future.id] = future
    poll_url = str(request.url_for("emulator-future", response_id=future.id))
    return JSONResponse({"response_id": future.id, "poll_url": poll_url}, status_code=202)


def _lookup(state: EmulatorState, response_id: str) -> Future | None:
    f = state.futures.get(response_id)
    now = time.time()
    if f is None or now > f.ready_at + state.settings.future_ttl_s:
        return None
    if f.outcome == "expired" and now >= f.ready_at:
        return None
    return f


async def future_status(request: Request) -> Response:
    s = request.app.state.emulator.settings
    state, refused = _gate(request, "poll", s.poll_503_rate, s.poll_429_rate)
    if refused:
        return refused
    f = _lookup(state, request.path_params["response_id"])
    if f is None:
        return _problem(404, "future not found")
    f.polls += 1
    if time.time() < f.ready_at:
        return JSONResponse({"status": "running", "response_url": None})
    if f.outcome == "failed":
        return JSONResponse({"status": "failed", "error": "emulated inference failure"})
    url = str(request.url_for("emulator-result", response_id=f.id))
    return JSONResponse({"status": "completed", "response_url": url})


async def future_result(request: Request) -> Response:
    state, refused = _gate(request, "result")
    if refused:
        return refused
    f = _lookup(state, request.path_params["response_id"])
    if f is None or time.time() < f.ready_at or f.outcome != "completed":
        return _problem(404, "result not found")
    f.fetches += 1
    return Response(orjson.dumps(_result(f)), media_type="application/json")


async def health(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    state.requests["health"] += 1
    if not state.settings.healthy:
        return _problem(503, "unhealthy")
    return JSONResponse({"status": "ok"})


async def stats(request: Request) -> Response:
    return Response(orjson.dumps(request.app.state.emulator.stats()), media_type="application/json")


async def settings_endpoint(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    if request.method == "POST":
        try:
            state.settings.update(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            return _problem(400, f"bad settings: {e}")
    return JSONResponse(asdict(state.settings) | {"token": None})


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    settings = settings or EmulatorSettings()
    app = Starlette(
        routes=[
            Route("/infer/{model}", infer, methods=["POST"]),
            Route("/futures/{response_id}", future_status, name="emulator-future"),
            Route("/futures/{response_id}/result", future_result, name="emulator-result"),
            Route("/healthz", health),
            Route("/_emulator/stats", stats),
            Route("/_emulator/settings", settings_endpoint, methods=["GET", "POST"]),
        ]
    )
    app.state.emulator = EmulatorState(settings, rng=random.Random(settings.seed))
    return app
