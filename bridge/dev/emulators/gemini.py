"""A local Gemini API (Veo video generation as long-running operations), for development and
tests.

Faithful to what the official SDK (google-genai 2.34.0, the last release whose
`generate_videos` speaks the Gemini Developer API; 3.x sends it to Vertex only) sends and
expects, under `/v1beta`: `POST /v1beta/models/{model}:predictLongRunning` with
`{"instances": [{"prompt", ...}], "parameters": {...}}` answers the operation
`{"name": "models/{model}/operations/{id}"}`; `GET /v1beta/models/{model}/operations/{id}`
answers it, without `done` while it runs, then `done: true` with `response`
(`generateVideoResponse.generatedSamples[].video.uri`) or `error` (google.rpc.Status), or a
`response` without samples and `raiMediaFilteredCount` (the safety filter);
`GET /v1beta/files/{id}:download?alt=media` answers a sample's bytes;
`GET /v1beta/models/{model}` answers the model (the health check). The key goes in
`x-goog-api-key` (or `?key=`). Errors have Google's shape
`{"error": {"code", "message", "status", "details"}}`: 403 without a key, 400
`API_KEY_INVALID` for a wrong one, 400 `INVALID_ARGUMENT` for a bad body, 404 for an unknown
path or operation, 429/503 with `Retry-After` (and a RetryInfo detail, which is what Google
sends). The Gemini API has no cancel for these operations, nor does the SDK. A request's
`webhookConfig: {"uris": [...], "userMetadata": {...}}` (a dynamic webhook) gets a
`video.generated` event POSTed to each URI when the operation is done (unsigned here).

`_emulate` in the body (emulator only): `{"duration_s": 2.5,
"outcome": "completed|failed|filtered|expired", "result_bytes": N}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import httpx
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
    json_response,
    lookup,
    new_future,
    new_state,
    ops_routes,
    spawn,
    unrouted,
)

__all__ = ["EmulatorSettings", "create_emulator_app"]

OUTCOMES = {"completed", "failed", "filtered", "expired"}
REQUEST_FIELDS = frozenset({"instances", "parameters", "webhookConfig", "_emulate"})
INSTANCE_INPUTS = ("prompt", "image", "video", "referenceImages")
RESPONSE_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"  # an mp4 header
FILTER_REASON = (
    "Your prompt could not be submitted. The emulator's safety filter blocked it (emulated)."
)
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_GATE_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    503: "The model is overloaded. Please try again later.",
}


def error(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """An error in Google's shape (google.rpc.Status with the HTTP code)."""
    body: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def gate_error(status: int, detail: str, headers: dict[str, str] | None) -> Response:
    details = None
    if headers and "Retry-After" in headers:
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                 "retryDelay": f"{headers['Retry-After']}s"}  # fmt: skip
        details = [retry]
    return error(status, _GATE_MESSAGES.get(status, detail), headers, details)


def _key(request: Request) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query_params.get("key")


def key_ok(state: EmulatorState, request: Request) -> bool:
    token = state.settings.token
    return token is None or _key(request) == token


def key_error(request: Request) -> Response:
    """Google's answers to a request without a key (403) or with a wrong one (400)."""
    if _key(request) is None:
        return error(403, "Method doesn't allow unregistered callers (callers without "
                     "established identity). Please use API Key or other form of API consumer "
                     "identity to call this API.")  # fmt: skip
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
            "domain": "googleapis.com"}  # fmt: skip
    return error(400, "API key not valid. Please pass a valid API key.", details=[info])


def guard(request: Request, kind: str) -> tuple[EmulatorState, Response | None]:
    state, refused = gate(request, kind, auth=key_ok, refuse=gate_error)
    if refused is not None and refused.status_code == 401:
        return state, key_error(request)
    return state, refused


def not_found(request: Request, status: int) -> Response:
    """Google answers a path or a method it does not map (e.g. `:cancel` here) with 404."""
    return error(404, f"The requested URL {request.url.path} was not found on this server.")


def check_body(body: Any) -> str | None:
    """Why Google would refuse the predictLongRunning body (400), or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    unknown = sorted(k for k in body if k not in REQUEST_FIELDS)
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        return "* PredictLongRunningRequest.instances: instances is required."
    if not all(isinstance(i, dict) and any(k in i for k in INSTANCE_INPUTS) for i in instances):
        return "Each instance needs a prompt, an image, a video or reference images."
    if not isinstance(body.get("parameters", {}), dict):
        return 'Invalid value at "parameters": expected an object.'
    if "webhookConfig" in body and webhook_uris(body) is None:
        return 'Invalid value at "webhook_config.uris": expected http(s) URLs.'
    return check_knobs(emulate_knobs(body))


def webhook_uris(body: dict[str, Any]) -> list[str] | None:
    """The per-request webhook URIs (`webhookConfig.uris`), or None if malformed."""
    config = body.get("webhookConfig")
    uris = config.get("uris") if isinstance(config, dict) else None
    if not isinstance(uris, list) or not all(
        isinstance(u, str) and u.startswith(("http://", "https://")) for u in uris
    ):
        return None
    return uris


def check_knobs(knobs: dict[str, Any]) -> str | None:
    numbers_ok = all(
        isinstance(knobs.get(k, 0), int | float) for k in ("duration_s", "result_bytes")
    )
    if not numbers_ok or knobs.get("outcome", "completed") not in OUTCOMES:
        return (
            f"_emulate: duration_s and result_bytes are numbers, outcome one of {sorted(OUTCOMES)}."
        )
    return None


async def predict_long_running(request: Request) -> Response:
    model, _, method = request.path_params["model_method"].partition(":")
    if method != "predictLongRunning":
        return error(404, f"The requested URL {request.url.path} was not found on this server.")
    state, refused = guard(request, "submit")
    if refused:
        return refused
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error(400, "Invalid JSON payload received. Unexpected token.")
    problem = check_body(body)
    if problem:
        return error(400, problem)
    future = new_future(state, body)
    future.id = f"models/{model}/operations/{secrets.token_hex(6)}"
    state.add(future)
    if webhook_uris(body):
        spawn(state, notify(request, future))
    return json_response({"name": future.id})


def webhook_event(request: Request, f: Future) -> dict[str, Any]:
    """A dynamic webhook's event when the operation is done (shape from third-party notes of
    Google's docs: Standard Webhooks envelope, thin `data`; Google signs it with an RS256
    JWT, which the emulator does not)."""
    data: dict[str, Any] = {"id": f.id}
    config = f.inputs["webhookConfig"]  # proto JSON: either spelling of a field name
    user_metadata = config.get("userMetadata", config.get("user_metadata"))
    if user_metadata is not None:
        data["user_metadata"] = user_metadata
    response = operation(request, f, f.ready_at).get("response", {})
    samples = response.get("generateVideoResponse", {}).get("generatedSamples") or []
    if samples:
        data["video_uri"] = samples[0]["video"]["uri"]
    else:
        data["error_message"] = "emulated inference failure"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f.ready_at))
    return {"type": "video.generated", "version": "v1", "timestamp": stamp, "data": data}


async def notify(request: Request, f: Future) -> None:
    """POST the event to every URI of the request's webhookConfig once the operation is
    done (an expired outcome is forgotten first: no event); failures are not retried."""
    await asyncio.sleep(max(0.0, f.ready_at - time.time()))
    if f.outcome == "expired":
        return
    event = orjson.dumps(webhook_event(request, f))
    headers = {"content-type": "application/json", "webhook-id": f"msg_{secrets.token_hex(8)}",
               "webhook-timestamp": str(int(time.time()))}  # fmt: skip
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        for uri in f.inputs["webhookConfig"]["uris"]:
            with contextlib.suppress(httpx.HTTPError):
                await client.post(uri, content=event, headers=headers)


def _samples(request: Request, f: Future) -> list[dict[str, Any]]:
    parameters = f.inputs.get("parameters") or {}
    count = parameters.get("sampleCount", 1)
    count = count if isinstance(count, int) and 1 <= count <= 4 else 1
    op_id = f.id.rsplit("/", 1)[-1]
    base = str(request.base_url).rstrip("/")
    return [
        {"video": {"uri": f"{base}/v1beta/files/{op_id}x{n}:download?alt=media"}}
        for n in range(count)
    ]


def operation(request: Request, f: Future, now: float) -> dict[str, Any]:
    """The operation as Google answers it at `now`."""
    if now < f.ready_at:
        return {"name": f.id}
    if f.outcome == "failed":
        return {"name": f.id, "done": True,
                "error": {"code": 13, "message": "emulated inference failure"}}  # fmt: skip
    if f.outcome == "filtered":
        video: dict[str, Any] = {"raiMediaFilteredCount": 1,
                                 "raiMediaFilteredReasons": [FILTER_REASON]}  # fmt: skip
    else:
        video = {"generatedSamples": _samples(request, f)}
    response = {"@type": RESPONSE_TYPE, "generateVideoResponse": video}
    return {"name": f.id, "done": True, "response": response}


async def get_operation(request: Request) -> Response:
    state, refused = guard(request, "poll")
    if refused:
        return refused
    name = f"models/{request.path_params['model']}/operations/{request.path_params['op']}"
    f = lookup(state, name)
    if f is None:
        return error(404, f"Operation {name} not found.")
    f.polls += 1
    return json_response(operation(request, f, time.time()))


async def download(request: Request) -> Response:
    state, refused = guard(request, "result")
    if refused:
        return refused
    file_id, _, method = request.path_params["file_method"].partition(":")
    op_id, _, _ = file_id.partition("x")
    found = [
        f
        for f in state.futures.values()
        if f.id.endswith(f"/operations/{op_id}") and f.outcome == "completed"
    ]
    f = lookup(state, found[0].id) if found and method == "download" else None
    if f is None or time.time() < f.ready_at:
        return error(404, f"File files/{file_id} not found.")
    f.fetches += 1
    return Response(VIDEO_BYTES + b"\x00" * f.result_bytes, media_type="video/mp4")


async def get_model(request: Request) -> Response:
    model = request.path_params["model_method"]
    if ":" in model:
        return error(404, f"The requested URL {request.url.path} was not found on this server.")
    _, refused = guard(request, "health")
    if refused:
        return refused
    return json_response({"name": f"models/{model}", "version": "3.1", "displayName": model,
                  "supportedGenerationMethods": ["predictLongRunning"]})  # fmt: skip


def dev_upstream(base_url: str, token_env: str | None = None) -> dict[str, Any]:
    """This emulator, served at base_url, as an upstream of the config (the demo), without
    Veo's rate limit."""
    url = f"{base_url}/v1beta/models/veo-3.1-generate-preview"
    return dev_config("gemini", token_env, url=url, rate_limit={"submit_per_s": None})


def dev_inputs(n: int) -> dict[str, Any]:
    """The inputs of the demo's n-th job: a predictLongRunning request."""
    return {"instances": [{"prompt": f"job {n}: a neon hologram of a cat"}]}


def create_emulator_app(settings: EmulatorSettings | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1beta/models/{model_method}", predict_long_running, methods=["POST"]),
            Route("/v1beta/models/{model_method}", get_model, methods=["GET"]),
            Route("/v1beta/models/{model}/operations/{op}", get_operation, methods=["GET"]),
            Route("/v1beta/files/{file_method}", download, methods=["GET"]),
            *ops_routes(),
        ],
        exception_handlers=unrouted(not_found),
    )
    app.state.emulator = new_state(settings)
    return app
