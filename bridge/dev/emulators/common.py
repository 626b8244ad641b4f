"""What every emulator shares: settings (durations, failure and error rates, token),
the futures it keeps, request counting, injected 503/429 answers, and the operations
routes (/healthz, /_emulator/stats, /_emulator/settings).

Futures are kept for future_ttl_s after they are ready (then forgotten), at most
max_futures of them; the settings can be changed only from loopback, with typed values.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

WEBHOOK_CONNECTIONS = 256  # webhooks under way at once; more wait for a connection
WEBHOOK_TIMEOUT_S = 10.0
MAX_RESULT_BYTES = 16 * 1024 * 1024  # the most padding one request may ask for
TEXT = "She sells seashells by the seashore"  # what the emulated models say

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
    max_futures: int = 100_000
    webhook_loss_rate: float = 0.0  # per-job webhooks (pushes) never sent, as if lost

    def update(self, changes: dict[str, Any]) -> None:
        """Apply changes, each checked against the field's type (KeyError, TypeError)."""
        types = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            if key not in types:
                raise KeyError(key)
            if not _fits(value, str(types[key])):
                raise TypeError(f"{key}: {value!r} is not {types[key]}")
        for key, value in changes.items():
            setattr(self, key, value)


def _fits(value: Any, type_name: str) -> bool:
    if value is None:
        return "None" in type_name
    if isinstance(value, bool):
        return type_name.startswith("bool")
    if type_name.startswith("float"):
        return isinstance(value, int | float)
    if type_name.startswith("int"):
        return isinstance(value, int)
    if type_name.startswith("str"):
        return isinstance(value, str)
    return False


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
    pushed_at: float | None = None  # when its final webhook's taken attempt was sent
    push_taken_at: float | None = None  # and when that attempt was answered 2xx


@dataclass
class EmulatorState:
    settings: EmulatorSettings
    futures: dict[str, Future] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rng: random.Random = field(default_factory=random.Random)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # webhooks under way
    webhook_http: aiohttp.ClientSession | None = None  # made on first use, closed at shutdown

    def webhook_client(self) -> aiohttp.ClientSession:
        """The one client every webhook is sent with (a client per webhook would cost ~14 ms
        of CPU each, loading its CA bundle: the emulator, not the bridge, would set the
        lag at a few hundred pushes a second). aiohttp, not httpx: httpx's pool scans every
        connection for each request it assigns (a readability check per connection), so
        with a few hundred webhooks under way the emulator's own loop stalled for hundreds
        of ms, and the pushes with it. Redirects are not followed (see send_webhook)."""
        if self.webhook_http is None:
            self.webhook_http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=WEBHOOK_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S),
                trust_env=False,
            )
        return self.webhook_http

    async def send_webhook(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        """POST one webhook (no redirect followed): the status answered, None if none."""
        try:
            async with self.webhook_client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def close(self) -> None:
        """At shutdown: stop the webhooks under way, close their client."""
        for task in list(self.tasks):
            task.cancel()
        if self.webhook_http is not None:
            await self.webhook_http.close()
            self.webhook_http = None

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

    def add(self, future: Future) -> None:
        """Keep a future; forget those past their ttl, and the oldest beyond max_futures."""
        s, now = self.settings, time.time()
        if len(self.futures) >= s.max_futures or len(self.futures) % 1024 == 0:
            for key in [k for k, f in self.futures.items() if now > f.ready_at + s.future_ttl_s]:
                del self.futures[key]
            while len(self.futures) >= s.max_futures:
                del self.futures[next(iter(self.futures))]
        self.futures[future.id] = future

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
                f.id: {
                    "ready_at": f.ready_at,
                    "polls": f.polls,
                    "outcome": f.outcome,
                    "pushed_at": f.pushed_at,
                    "push_taken_at": f.push_taken_at,
                }
                for f in self.futures.values()
            },
        }


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def bearer(state: EmulatorState, request: Request) -> bool:
    """`Authorization: Bearer <token>` when the emulator has a token."""
    token = state.settings.token
    return token is None or request.headers.get("authorization") == f"Bearer {token}"


Auth = Callable[[EmulatorState, Request], bool]


def emulate_knobs(inputs: Any) -> dict[str, Any]:
    """The per-request `_emulate` object of the inputs, if any."""
    knobs = inputs.get("_emulate", {}) if isinstance(inputs, dict) else {}
    return knobs if isinstance(knobs, dict) else {}


def webhook_lost(state: EmulatorState, inputs: Any) -> bool:
    """Whether the job's webhook is lost (never sent, nor retried): `_emulate.lose_webhook`,
    else at random with `webhook_loss_rate`. Counted as "webhook_lost" in the stats."""
    lost = emulate_knobs(inputs).get("lose_webhook")
    if not isinstance(lost, bool):
        lost = state.chance(state.settings.webhook_loss_rate)
    if lost:
        state.requests["webhook_lost"] += 1
    return lost


def new_future(state: EmulatorState, inputs: Any) -> Future:
    knobs = emulate_knobs(inputs)
    duration = float(knobs.get("duration_s", state.draw_duration_s()))
    now = time.time()
    return Future(
        id=secrets.token_hex(8),
        inputs=inputs,
        created_at=now,
        ready_at=now + duration,
        outcome=str(knobs.get("outcome", state.draw_outcome())),
        result_bytes=min(MAX_RESULT_BYTES, max(0, int(knobs.get("result_bytes", 0)))),
    )


def echo_output(f: Future, **fields: Any) -> dict[str, Any]:
    """An emulated model's output: `fields`, the inputs echoed, and `result_bytes` of
    padding."""
    out: dict[str, Any] = {**fields, "echo": f.inputs}
    if f.result_bytes:
        out["padding"] = "x" * f.result_bytes
    return out


def lookup(state: EmulatorState, future_id: str) -> Future | None:
    """The future, unless unknown, past its ttl, or expired (an "expired" outcome)."""
    f = state.futures.get(future_id)
    now = time.time()
    if f is None or now > f.ready_at + state.settings.future_ttl_s:
        return None
    if f.outcome == "expired" and now >= f.ready_at:
        return None
    return f


Refuse = Callable[[int, str, dict[str, str] | None], Response]  # the provider's error shape


def retry(state: EmulatorState, status: int, refuse: Refuse = problem) -> Response:
    headers = {"Retry-After": str(state.settings.retry_after_s)}
    return refuse(status, "try again later", headers)


def gate(
    request: Request, kind: str, auth: Auth = bearer, refuse: Refuse = problem
) -> tuple[EmulatorState, Response | None]:
    """Count the request (by `kind`), check the token, then inject what the settings say:
    a "submit" is answered 503 at submit_503_rate, a "poll" 503 or 429 at poll_503_rate and
    poll_429_rate, a provider's own "health" endpoint 503 while not healthy; each in the
    provider's error shape (`refuse`), with Retry-After."""
    state: EmulatorState = request.app.state.emulator
    state.requests[kind] += 1
    state.times[kind].append(time.monotonic())
    if not auth(state, request):
        return state, refuse(401, "missing or invalid token", None)
    s = state.settings
    rate_503 = {"submit": s.submit_503_rate, "poll": s.poll_503_rate}.get(kind, 0.0)
    if (kind == "health" and not s.healthy) or state.chance(rate_503):
        return state, retry(state, 503, refuse)
    if kind == "poll" and state.chance(s.poll_429_rate):
        return state, retry(state, 429, refuse)
    return state, None


def spawn(state: EmulatorState, work: Coroutine[Any, Any, None]) -> None:
    """Run work in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(work)
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


async def post_webhook(
    state: EmulatorState,
    url: str,
    payload: Any,
    attempts: int,
    retry_delay_s: float,
    ok_statuses: tuple[int, ...] = (200,),
) -> bool:
    """POST payload to url like a provider's per-job webhook: up to attempts tries,
    retry_delay_s apart, until one answers one of ok_statuses. Each try is counted as
    "webhook" in the stats; then "webhook_sent" (taken) or "webhook_failed" (given up)."""
    body = orjson.dumps(payload)
    headers = {"Content-Type": "application/json"}
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(retry_delay_s)
        state.requests["webhook"] += 1
        if await state.send_webhook(url, body, headers) in ok_statuses:
            state.requests["webhook_sent"] += 1
            return True
    state.requests["webhook_failed"] += 1
    return False


async def health(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    state.requests["health"] += 1
    if not state.settings.healthy:
        return problem(503, "unhealthy")
    return JSONResponse({"status": "ok"})


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON as providers send it (compact; any JSON value)."""
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


async def stats(request: Request) -> Response:
    return json_response(request.app.state.emulator.stats())


def unrouted(answer: Callable[[Request, int], Response]) -> dict[Any, Any]:
    """Starlette exception handlers answering an unknown path (404) or method (405) in the
    provider's shape: answer(request, status)."""

    async def handler(request: Request, exc: Exception) -> Response:
        return answer(request, getattr(exc, "status_code", 500))

    return {404: handler, 405: handler}


def _from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def settings_endpoint(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    if request.method == "POST":
        if not _from_loopback(request):
            return problem(403, "settings can be changed from loopback only")
        try:
            changes = orjson.loads(await request.body())
            if not isinstance(changes, dict):
                raise TypeError("settings must be a JSON object")
            state.settings.update(changes)
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            return problem(400, f"bad settings: {e}")
    return JSONResponse(asdict(state.settings) | {"token": None})


def ops_routes() -> list[Route]:
    return [
        Route("/healthz", health),
        Route("/_emulator/stats", stats),
        Route("/_emulator/settings", settings_endpoint, methods=["GET", "POST"]),
    ]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """An emulator app's lifespan: its webhooks' client is closed at shutdown."""
    try:
        yield
    finally:
        await app.state.emulator.close()


def dev_config(protocol: str, token_env: str | None, **keys: Any) -> dict[str, Any]:
    """An upstream of the config that speaks `protocol` to an emulator, for development
    (each emulator module's `dev_upstream`): its keys and, with `token_env`, the variable
    holding the token the emulator was given."""
    return {"protocol": protocol, **keys, **({"token_env": token_env} if token_env else {})}


def new_state(settings: EmulatorSettings | None) -> EmulatorState:
    settings = settings or EmulatorSettings()
    return EmulatorState(settings, rng=random.Random(settings.seed))
