"""A local Replicate predictions API (the `replicate` protocol), for development and tests.

Faithful to api.replicate.com as the official SDK (replicate 1.0.7) and the API recordings in
its test cassettes show it:
- create: `POST /v1/models/{owner}/{name}/predictions` (also deployments) with
  `{"input": {...}}`, or `POST /v1/predictions` with `"version"` as a 64-hex version id,
  `owner/name` or `owner/name:<id>`; answers 201 with the prediction (`status: starting`).
  Optional `webhook`, `webhook_events_filter` (start, output, logs, completed),
  `Prefer: wait[=N]` (holds the request up to N <= 60 s) and `Cancel-After` (a deadline:
  passed before the prediction starts -> `aborted`, while it runs -> `canceled`).
- `GET /v1/predictions/{id}`; `POST /v1/predictions/{id}/cancel`; statuses
  starting -> processing -> succeeded | failed | canceled | aborted; `output` is the result,
  `error` the failure text, `metrics` and `completed_at` once terminal.
- after retention (`future_ttl_s`, 1 h like Replicate) or for the "expired" outcome the
  prediction answers `data_removed: true` with `input`/`output` null; unknown ids are 404.
- errors are `application/problem+json` with `detail` (and `title`, `status`), e.g. 401
  "Unauthenticated", 422 "Invalid version or not permitted" / "Input validation failed"
  with `invalid_fields`, 429 "Request was throttled. Your rate limit resets in ~Ns."
  with `Retry-After`. Auth is `Authorization: Bearer <token>` (the older `Token <token>`
  scheme is accepted too); a request without it is 401 even when no token is configured.
- webhooks: the prediction as JSON, signed the Standard Webhooks way (`webhook-id`,
  `webhook-timestamp`, `webhook-signature`) with the secret of
  `GET /v1/webhooks/default/secret`; redirects are not followed; 3 attempts.
Not confirmed against the live API: the body of a 404 for an unknown prediction, the status
code of a cancel of a finished prediction (200 with it unchanged here), webhook retry timing,
whether http:// webhook URLs are refused (accepted here, for loopback receivers).

Per request, `input._emulate` sets `duration_s`, `outcome` (completed|failed|expired),
`result_bytes`, `error` (the failure text), `start_s` (time spent `starting`) and
`lose_webhook` (true: its webhooks are never sent; else lost at random with the setting
`webhook_loss_rate`).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
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
    json_response,
    lifespan,
    new_future,
    new_state,
    ops_routes,
    spawn,
    unrouted,
    webhook_lost,
)

__all__ = ["EmulatorSettings", "EmulatorState", "Prediction", "create_emulator_app"]

EVENTS = frozenset({"start", "output", "logs", "completed"})
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
MAX_WAIT_S = 60
WEBHOOK_ATTEMPTS = 3
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
MODEL_REF = re.compile(
    r"^(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+)(?::(?P<version>.*))?$"
)
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class Prediction(Future):
    model: str = ""
    version: str = ""
    started_at: float = 0.0
    urls: dict[str, str] = field(default_factory=dict)
    webhook: str | None = None
    events: frozenset[str] = EVENTS
    error: str = "emulated inference failure"
    canceled_at: float | None = None
    deadline: float | None = None  # from Cancel-After
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Hooks:
    """The webhook signing secret."""

    secret: str


def _problem(status: int, detail: str, title: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"title": title} if title else {}
    body |= {"detail": detail, "status": status, **extra}
    return Response(orjson.dumps(body), status, media_type="application/problem+json")


def _invalid(field_name: str, description: str, kind: str = "invalid_type") -> Response:
    return _problem(
        422,
        f"- {field_name}: {description}\n",
        "Input validation failed",
        invalid_fields=[{"type": kind, "field": field_name, "description": description}],
    )


def _auth(state: EmulatorState, request: Request) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        return False
    return state.settings.token is None or token.strip() == state.settings.token


def _refusal(state: EmulatorState, refused: Response) -> Response:
    """Common's refusal (401, 429 or 503) in Replicate's words."""
    code, after_s = refused.status_code, state.settings.retry_after_s
    if code == 401:
        return _problem(401, "You did not pass a valid authentication token", "Unauthenticated")
    headers = {"Retry-After": str(after_s)}
    if code == 429:
        detail = f"Request was throttled. Your rate limit resets in ~{after_s}s."
        return json_response({"detail": detail}, 429, headers)
    return json_response(
        {"detail": "Service temporarily unavailable", "status": code}, code, headers
    )


def _guard(request: Request, kind: str) -> tuple[EmulatorState, Response | None]:
    state, refused = gate(request, kind, auth=_auth)
    return state, (_refusal(state, refused) if refused else None)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(26))


def _ending(p: Prediction) -> tuple[float, str]:
    """When the prediction ends and in which status (cancel and deadline may come first)."""
    ends = [(p.ready_at, "failed" if p.outcome == "failed" else "succeeded")]
    if p.canceled_at is not None:
        ends.append((p.canceled_at, "canceled"))
    if p.deadline is not None:
        ends.append((p.deadline, "aborted" if p.deadline < p.started_at else "canceled"))
    return min(ends, key=lambda end: end[0])


def _status(p: Prediction, now: float) -> str:
    end_at, final = _ending(p)
    if now >= end_at:
        return final
    return "starting" if now < p.started_at else "processing"


def _output(p: Prediction) -> Any:
    return echo_output(p, text=TEXT)


def _removed(p: Prediction, ttl_s: float, now: float) -> bool:
    end_at, _ = _ending(p)
    return now >= end_at and (p.outcome == "expired" or now > end_at + ttl_s)


def _view(p: Prediction, ttl_s: float, now: float | None = None) -> dict[str, Any]:
    """The prediction as Replicate shows it at `now`."""
    now = time.time() if now is None else now
    status, (end_at, _) = _status(p, now), _ending(p)
    removed = _removed(p, ttl_s, now)
    body: dict[str, Any] = {
        "id": p.id,
        "model": p.model,
        "version": p.version,
        "input": None if removed else p.inputs,
        "logs": "" if status == "starting" else "emulating\n",
        "output": _output(p) if status == "succeeded" and not removed else None,
        "data_removed": removed,
        "error": p.error if status == "failed" else None,
        "status": status,
        "created_at": _iso(p.created_at),
        "urls": p.urls,
    }
    if status != "starting" and p.started_at < end_at:
        body["started_at"] = _iso(p.started_at)
    if status in TERMINAL:
        started = min(p.started_at, end_at)
        body["completed_at"] = _iso(end_at)
        body["metrics"] = {"predict_time": end_at - started, "total_time": end_at - p.created_at}
    return body


def _find(state: EmulatorState, prediction_id: str) -> Prediction | None:
    p = state.futures.get(prediction_id)
    return p if isinstance(p, Prediction) else None


def _parse_version(ref: Any) -> tuple[str, str] | None:
    """(model, version) of a `version` field, or None if Replicate would refuse it."""
    if not isinstance(ref, str):
        return None
    if VERSION_ID.match(ref):
        return "replicate/emulated", ref
    m = MODEL_REF.match(ref)
    if m is None:
        return None
    model, version = f"{m['owner']}/{m['name']}", m["version"]
    if version is None:
        return model, "hidden"
    return (model, version) if VERSION_ID.match(version) else None


def _cancel_after_s(value: str | None) -> float | None:
    """`Cancel-After: 90s`, `1m30s`, `500ms` or plain seconds; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    parts = DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * UNIT_S[u] for n, u in parts)


def _prefer_wait_s(value: str | None) -> float:
    """Seconds `Prefer: wait` or `Prefer: wait=N` asks the create to hold; 0 without it."""
    for item in (value or "").split(","):
        key, _, n = item.strip().partition("=")
        if key.strip().lower() == "wait":
            return float(min(MAX_WAIT_S, max(1, int(n)))) if n.strip().isdigit() else MAX_WAIT_S
    return 0.0


def _check_body(body: Any) -> Response | None:
    """Replicate's 4xx for a create body it would refuse (version is checked elsewhere)."""
    if not isinstance(body, dict):
        return _problem(400, "The request body must be a JSON object")
    inputs = body.get("input")
    if not isinstance(inputs, dict):
        given = "null" if inputs is None else type(inputs).__name__
        return _invalid("input", f"Invalid type. Expected: object, given: {given}")
    webhook = body.get("webhook")
    if webhook is not None and not (
        isinstance(webhook, str) and re.match(r"^https?://[^\s/]+", webhook)
    ):
        return _invalid("webhook", "Does not match format 'uri'", "format")
    events = body.get("webhook_events_filter")
    if events is not None and not (
        isinstance(events, list) and all(isinstance(e, str) and e in EVENTS for e in events)
    ):
        return _invalid(
            "webhook_events_filter", "must be a list of start, output, logs, completed", "enum"
        )
    return None


async def _read_json(request: Request) -> tuple[Any, Response | None]:
    try:
        return orjson.loads(await request.body()), None
    except orjson.JSONDecodeError:
        return None, _problem(400, "The request body is not valid JSON")


def _new_prediction(
    request: Request, state: EmulatorState, body: dict[str, Any], model: str, version: str
) -> Prediction:
    inputs = body["input"]
    knobs = emulate_knobs(inputs)
    base = new_future(state, inputs)
    duration = base.ready_at - base.created_at
    start_s = float(knobs.get("start_s", min(0.2, duration / 4)))
    p = Prediction(**vars(base), model=model, version=version)
    p.id = _new_id()
    p.started_at = p.created_at + max(0.0, start_s)
    p.ready_at = max(p.ready_at, p.started_at)
    p.urls = {
        "get": str(request.url_for("replicate-prediction", prediction_id=p.id)),
        "cancel": str(request.url_for("replicate-cancel", prediction_id=p.id)),
    }
    p.webhook = body.get("webhook")
    if body.get("webhook_events_filter") is not None:
        p.events = frozenset(body["webhook_events_filter"])
    if isinstance(knobs.get("error"), str):
        p.error = knobs["error"]
    after_s = _cancel_after_s(request.headers.get("cancel-after"))
    p.deadline = None if after_s is None else p.created_at + after_s
    return p


async def _wait_for_change(p: Prediction, until: float) -> None:
    """Sleep until `until` or until the prediction changes (a cancel)."""
    timeout_s = until - time.time()
    if timeout_s <= 0:
        return
    try:
        await asyncio.wait_for(p.changed.wait(), timeout_s)
    except TimeoutError:
        return
    p.changed.clear()


async def _send_webhook(
    p: Prediction, secret: str, ttl_s: float, state: EmulatorState
) -> tuple[float, float] | None:
    """Send one webhook (up to WEBHOOK_ATTEMPTS tries); when the taken attempt was sent
    and when it was answered."""
    payload = orjson.dumps(_view(p, ttl_s)).decode()
    for attempt in range(WEBHOOK_ATTEMPTS):
        now = datetime.now(UTC)
        msg_id = f"msg_{secrets.token_hex(12)}"
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, payload),
        }
        status = await state.send_webhook(str(p.webhook), payload.encode(), headers)
        if status is not None and 200 <= status < 300:
            state.requests["webhook_sent"] += 1
            return now.timestamp(), time.time()
        state.requests["webhook_failed"] += 1
        await asyncio.sleep(0.5 * 2**attempt)
    return None


async def _push(p: Prediction, hooks: Hooks, state: EmulatorState) -> None:
    """Deliver the prediction's webhooks: `start` when it starts, `completed` when it ends."""
    ttl_s = state.settings.future_ttl_s
    start_pending = "start" in p.events
    while True:
        now, (end_at, _) = time.time(), _ending(p)
        if start_pending and p.started_at <= now < end_at:
            start_pending = False
            await _send_webhook(p, hooks.secret, ttl_s, state)
            continue
        if now >= end_at:
            break
        await _wait_for_change(p, min(end_at, p.started_at) if start_pending else end_at)
    if "completed" in p.events:
        sent = await _send_webhook(p, hooks.secret, ttl_s, state)
        if sent is not None:
            p.pushed_at, p.push_taken_at = sent


async def _create(request: Request, model: str | None) -> Response:
    state, refused = _guard(request, "submit")
    if refused:
        return refused
    body, bad = await _read_json(request)
    if bad:
        return bad
    bad = _check_body(body)
    if bad:
        return bad
    ref = (model, "hidden") if model else _parse_version(body.get("version"))
    if ref is None:
        return _problem(
            422,
            "The specified version does not exist (or perhaps you don't have permission "
            "to use it?)",
            "Invalid version or not permitted",
        )
    p = _new_prediction(request, state, body, *ref)
    state.add(p)
    if p.webhook and not webhook_lost(state, p.inputs):
        spawn(state, _push(p, request.app.state.replicate, state))
    wait_s = _prefer_wait_s(request.headers.get("prefer"))
    while wait_s and time.time() < min(_ending(p)[0], p.created_at + wait_s):
        await _wait_for_change(p, min(_ending(p)[0], p.created_at + wait_s))
    return json_response(_view(p, state.settings.future_ttl_s), 201)


async def create_by_version(request: Request) -> Response:
    return await _create(request, None)


async def create_by_model(request: Request) -> Response:
    params = request.path_params
    return await _create(request, f"{params['owner']}/{params['name']}")


def _not_found() -> Response:
    return _problem(404, "Not found.")


async def get_prediction(request: Request) -> Response:
    state, refused = _guard(request, "poll")
    if refused:
        return refused
    p = _find(state, request.path_params["prediction_id"])
    if p is None:
        return _not_found()
    p.polls += 1
    return json_response(_view(p, state.settings.future_ttl_s))


async def cancel_prediction(request: Request) -> Response:
    state, refused = _guard(request, "cancel")
    if refused:
        return refused
    p = _find(state, request.path_params["prediction_id"])
    if p is None:
        return _not_found()
    now = time.time()
    if now < _ending(p)[0]:
        p.canceled_at = now
        p.changed.set()
    return json_response(_view(p, state.settings.future_ttl_s, now))


async def webhook_secret(request: Request) -> Response:
    _, refused = _guard(request, "secret")
    if refused:
        return refused
    return json_response({"key": request.app.state.replicate.secret})


async def account(request: Request) -> Response:
    _, refused = _guard(request, "account")
    if refused:
        return refused
    return json_response({"type": "organization", "username": "emulator", "name": "Emulator"})


async def model_version(request: Request) -> Response:
    """A version (for `replicate.run("owner/name:<id>")`), schema with an object output."""
    _, refused = _guard(request, "version")
    if refused:
        return refused
    version_id = request.path_params["version_id"]
    if not VERSION_ID.match(version_id):
        return _not_found()
    schemas = {"Input": {"type": "object"}, "Output": {"type": "object"}}
    return json_response(
        {
            "id": version_id,
            "created_at": _iso(0),
            "cog_version": "0.9.5",
            "openapi_schema": {"openapi": "3.0.2", "components": {"schemas": schemas}},
        }
    )


def _no_route(request: Request, code: int) -> Response:
    return _problem(code, "Not found." if code == 404 else "Method not allowed.")


def dev_upstream(base_url: str, token_env: str | None = None) -> dict[str, Any]:
    """This emulator, served at base_url, as an upstream of the config (the demo), without
    Replicate's rate limits. Replicate wants a token even where the emulator has none."""
    return dev_config(
        "replicate", token_env, url=f"{base_url}/v1", model="acme/echo",
        health_url=f"{base_url}/healthz", rate_limit={"submit_per_s": None, "poll_per_s": None},
    )  # fmt: skip


def dev_push_secret(app: Starlette) -> str:
    """The secret this emulator signs its webhooks with (what `GET
    /v1/webhooks/default/secret` answers), for an upstream's `push_secret_env`."""
    hooks: Hooks = app.state.replicate
    return hooks.secret


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job."""
    return {"prompt": f"job {n}"}


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    app = Starlette(
        lifespan=lifespan,
        exception_handlers=unrouted(_no_route),
        routes=[
            Route("/v1/predictions", create_by_version, methods=["POST"]),
            Route("/v1/models/{owner}/{name}/predictions", create_by_model, methods=["POST"]),
            Route("/v1/deployments/{owner}/{name}/predictions", create_by_model, methods=["POST"]),
            Route("/v1/predictions/{prediction_id}", get_prediction, name="replicate-prediction"),
            Route(
                "/v1/predictions/{prediction_id}/cancel",
                cancel_prediction,
                methods=["POST"],
                name="replicate-cancel",
            ),
            Route("/v1/models/{owner}/{name}/versions/{version_id}", model_version),
            Route("/v1/webhooks/default/secret", webhook_secret),
            Route("/v1/account", account),
            *ops_routes(),
        ],
    )
    app.state.emulator = new_state(settings)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    app.state.replicate = Hooks(secret=f"whsec_{secret}")
    return app
