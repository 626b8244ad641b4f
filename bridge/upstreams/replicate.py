"""The `replicate` upstream protocol (CONTRACT §5b): Replicate's predictions API.

- submit: `model: owner/name` -> `POST {url}/models/{owner}/{name}/predictions`;
  `model: owner/name:<version id>` -> `POST {url}/predictions` with `"version"`; the body
  is `{"input": inputs}` (plus `webhook` and `webhook_events_filter: ["completed"]` when a
  push URL is given). 201 answers the prediction; the job keeps its id.
- poll: `GET {url}/predictions/{id}`: starting/processing -> Running; succeeded -> Done with
  `output` as the result (the poll answer carries it); failed -> Failed with `error`;
  canceled/aborted -> Failed; `data_removed: true` or 404 -> Expired (Replicate removes an
  API prediction's input and output after 1 h).
- cancel: `POST {url}/predictions/{id}/cancel`.
- push: Replicate signs its webhooks the Standard Webhooks way with the account's secret
  (`GET /v1/webhooks/default/secret`); with `push_secret_env` holding it, `verify_push`
  checks each push (upstreams/webhooks.py).
- errors are problem+json: `title` and `detail` become the message; 429/5xx are transient,
  with `Retry-After` or, failing that, the "resets in ~Ns" of the 429's detail.
The token is sent only to the configured origins (url, health_url), never to a URL an
answer names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import orjson

from bridge.config import ReplicateUpstreamConfig
from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, describe_error, excerpt, parse_retry_after, read_capped
from bridge.upstreams.base import (
    Cancelled,
    CancelOutcome,
    Capabilities,
    Done,
    Expired,
    Failed,
    FetchOutcome,
    HealthOutcome,
    Healthy,
    PollOutcome,
    Rejected,
    Running,
    SubmitOutcome,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.octoai import REQUEST_ERRORS, origin
from bridge.upstreams.webhooks import verify_standard_webhook

MAX_CONTROL_BODY_BYTES = 1024 * 1024
RUNNING_STATUSES = frozenset({"starting", "processing"})
ENDED_WITHOUT_OUTPUT = {
    "canceled": "the prediction was canceled at Replicate",
    "aborted": "the prediction was aborted at Replicate (its deadline passed before it started)",
}
PREDICTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s\b")
EXPIRED_MESSAGE = "Replicate removed the prediction's data (API predictions are kept 1 hour)"


def _retry_after_s(response: httpx.Response, body: bytes) -> float | None:
    """`Retry-After`, else the wait a 429's detail names ("Your rate limit resets in ~30s")."""
    header = parse_retry_after(response.headers.get("retry-after"))
    if header is not None or response.status_code != 429:
        return header
    match = RESETS_IN.search(_problem_text(body))
    return float(match.group(1)) if match else None


def _transient(reason: str, response: httpx.Response | None = None, body: bytes = b"") -> Transient:
    if response is None:
        return Transient(reason)
    return Transient(reason, response.status_code, _retry_after_s(response, body))


def _is_transient_status(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def _problem_text(body: bytes) -> str:
    """Replicate's error text: `title: detail` of its problem+json, else the body's start."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return excerpt(body, 512)
    if not isinstance(data, dict):
        return excerpt(body, 512)
    parts = [str(data[k]).strip() for k in ("title", "detail") if data.get(k)]
    return ": ".join(parts)[:1000] if parts else excerpt(body, 512)


def _refused(response: httpx.Response, body: bytes, what: str) -> Rejected | Transient:
    code = response.status_code
    if _is_transient_status(code):
        return _transient(f"Replicate answered {code} to the {what}", response, body)
    return Rejected(code, f"Replicate refused the {what} ({code}): {_problem_text(body)}")


def _prediction(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class ReplicateUpstream:
    """One configured upstream speaking Replicate's predictions API."""

    protocol: ClassVar[str] = "replicate"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True, push=True)

    def __init__(
        self,
        name: str,
        config: ReplicateUpstreamConfig,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.max_result_bytes = max_result_bytes
        self._base = config.url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        configured = [config.url, *([config.health_url] if config.health_url else [])]
        self._auth_origins = {origin(u) for u in configured}

    def __repr__(self) -> str:  # never show the token
        return f"ReplicateUpstream({self.name!r}, {self.config.url!r}, {self.config.model!r})"

    async def _request(
        self, method: str, url: str, timeout_s: float, limit_bytes: int, **kw: Any
    ) -> tuple[httpx.Response, bytes]:
        auth = self._auth if origin(url) in self._auth_origins else {}
        headers = {**auth, **kw.pop("headers", {})}
        response = await self.client.send_raw(method, url, timeout_s, headers, **kw)
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        return response, body

    def _create(self, inputs: dict[str, Any], push_url: str | None) -> tuple[str, bytes]:
        """The create URL and body for the configured model (official) or version."""
        model, _, version = self.config.model.partition(":")
        body: dict[str, Any] = {"input": inputs}
        if push_url:
            body |= {"webhook": push_url, "webhook_events_filter": ["completed"]}
        if version:
            return f"{self._base}/predictions", orjson.dumps({"version": version, **body})
        owner, name = (quote(part, safe="") for part in model.split("/", 1))
        return f"{self._base}/models/{owner}/{name}/predictions", orjson.dumps(body)

    def _prediction_url(self, ref: UpstreamRef, suffix: str = "") -> str | None:
        if not PREDICTION_ID.match(ref.id):
            return None
        return f"{self._base}/predictions/{ref.id}{suffix}"

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        if not isinstance(inputs, dict):
            return Rejected(None, "Replicate's input is a JSON object; the inputs are not one")
        url, content = self._create(inputs, push_url)
        headers = {"Content-Type": "application/json"}
        timeout_s = self.config.submit_timeout_s
        try:
            response, body = await self._request(
                "POST", url, timeout_s, MAX_CONTROL_BODY_BYTES, content=content, headers=headers
            )
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        if not 200 <= response.status_code < 300:
            return _refused(response, body, "prediction")
        data = _prediction(body)
        prediction_id = data.get("id") if data else None
        if not isinstance(prediction_id, str) or not PREDICTION_ID.match(prediction_id):
            reason = f"malformed create response ({response.status_code}): {excerpt(body, 200)}"
            return _transient(reason, response, body)
        return Submitted(UpstreamRef(prediction_id), response.status_code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        url = self._prediction_url(ref)
        if url is None:
            return Failed(f"not a Replicate prediction id: {ref.id[:64]!r}")
        try:
            response, body = await self._request(
                "GET", url, self.config.poll.timeout_s, self.max_result_bytes
            )
        except BodyTooLarge as e:
            return Failed(str(e))
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if code == 404:
            return Expired("Replicate no longer knows the prediction (404)", code)
        if not 200 <= code < 300:
            refused = _refused(response, body, "poll")
            return refused if isinstance(refused, Transient) else Failed(refused.message, code)
        data = _prediction(body)
        if data is None or not isinstance(data.get("status"), str):
            return _transient(f"malformed prediction ({code}): {excerpt(body, 200)}", response)
        return self._poll_outcome(data, code)

    def _poll_outcome(self, data: dict[str, Any], code: int) -> PollOutcome:
        status = data["status"]
        if status in RUNNING_STATUSES:
            return Running(code, status)
        if status in ENDED_WITHOUT_OUTPUT:
            return Failed(ENDED_WITHOUT_OUTPUT[status], code)
        if status not in ("succeeded", "failed"):
            return Running(code, status[:64])  # a status Replicate adds later: keep polling
        if status == "failed":
            error = data.get("error")
            return Failed(
                str(error)[:1000] if error else "the prediction failed at Replicate", code
            )
        if data.get("data_removed") is True:
            return Expired(EXPIRED_MESSAGE, code)
        return Done(result=orjson.dumps(data.get("output")), status_code=code)

    def verify_push(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        """Whether a push is signed with the account's webhook secret (Standard Webhooks)."""
        return verify_standard_webhook(secret, headers, body)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        return Failed("the replicate protocol has no separate result fetch")

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        url = self._prediction_url(ref, "/cancel")
        if url is None:
            return Rejected(None, f"not a Replicate prediction id: {ref.id[:64]!r}")
        try:
            response, body = await self._request(
                "POST", url, self.config.submit_timeout_s, MAX_CONTROL_BODY_BYTES
            )
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        if 200 <= response.status_code < 300:
            return Cancelled(response.status_code)
        return _refused(response, body, "cancel")

    async def health(self) -> HealthOutcome:
        """Healthy when health_url answers 200. Without one (Replicate has no health
        endpoint), always healthy."""
        if not self.config.health_url:
            return Healthy("no health_url")
        try:
            response, _ = await self._request(
                "GET", self.config.health_url, self.config.submit_timeout_s, 64 * 1024
            )
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if code == 200:
            return Healthy(f"health answered {code}", code)
        return Transient(f"health answered {code}", code)
