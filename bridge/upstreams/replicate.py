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

import orjson

from bridge.config import ReplicateUpstreamConfig
from bridge.net.util import excerpt
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
    UpstreamRef,
)
from bridge.upstreams.httpjson import (
    Answer,
    HttpUpstream,
    Voice,
    json_object,
    poll_refusal,
    probe_health,
    refusal,
    transient,
)
from bridge.upstreams.webhooks import verify_standard_webhook

RUNNING_STATUSES = frozenset({"starting", "processing"})
ENDED_WITHOUT_OUTPUT = {
    "canceled": "the prediction was canceled at Replicate",
    "aborted": "the prediction was aborted at Replicate (its deadline passed before it started)",
}
PREDICTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s\b")
EXPIRED_MESSAGE = "Replicate removed the prediction's data (API predictions are kept 1 hour)"


def _problem_text(body: bytes) -> str:
    """Replicate's error text: `title: detail` of its problem+json, else the body's start."""
    data = json_object(body)
    parts = [str(data[k]).strip() for k in ("title", "detail") if data.get(k)] if data else []
    return ": ".join(parts)[:1000] if parts else excerpt(body, 512)


def _resets_in_s(body: bytes) -> float | None:
    """The wait a throttled answer's detail names ("Your rate limit resets in ~30s")."""
    match = RESETS_IN.search(_problem_text(body))
    return float(match.group(1)) if match else None


VOICE = Voice("Replicate", text=_problem_text, named=True)


class ReplicateUpstream(HttpUpstream[ReplicateUpstreamConfig]):
    """One configured upstream speaking Replicate's predictions API."""

    protocol: ClassVar[str] = "replicate"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True, push=True)

    def retry_hint(self, body: bytes) -> float | None:
        return _resets_in_s(body)

    def __repr__(self) -> str:  # never show the token
        return f"ReplicateUpstream({self.name!r}, {self.config.url!r}, {self.config.model!r})"

    def _create(self, inputs: dict[str, Any], push_url: str | None) -> tuple[str, dict[str, Any]]:
        """The create URL and body for the configured model (official) or version."""
        model, _, version = self.config.model.partition(":")
        body: dict[str, Any] = {"input": inputs}
        if push_url:
            body |= {"webhook": push_url, "webhook_events_filter": ["completed"]}
        if version:
            return f"{self.base}/predictions", {"version": version, **body}
        owner, name = (quote(part, safe="") for part in model.split("/", 1))
        return f"{self.base}/models/{owner}/{name}/predictions", body

    def _prediction_url(self, ref: UpstreamRef, suffix: str = "") -> str | None:
        if not PREDICTION_ID.match(ref.id):
            return None
        return f"{self.base}/predictions/{ref.id}{suffix}"

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        if not isinstance(inputs, dict):
            return Rejected(None, "Replicate's input is a JSON object; the inputs are not one")
        url, payload = self._create(inputs, push_url)
        answer = await self.send("POST", url, self.config.submit_timeout_s, payload=payload)
        if not isinstance(answer, Answer):
            return answer
        if refused := refusal(answer, VOICE, "prediction"):
            return refused
        data, code = answer.json_object(), answer.status_code
        prediction_id = data.get("id") if data else None
        if not isinstance(prediction_id, str) or not PREDICTION_ID.match(prediction_id):
            reason = f"malformed create response ({code}): {excerpt(answer.body, 200)}"
            return transient(reason, answer)
        return Submitted(UpstreamRef(prediction_id), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        url = self._prediction_url(ref)
        if url is None:
            return Failed(f"not a Replicate prediction id: {ref.id[:64]!r}")
        answer = await self.send_for_result(
            "GET", url, self.config.poll.timeout_s, "the prediction"
        )
        if not isinstance(answer, Answer):
            return answer
        gone = "Replicate no longer knows the prediction (404)"
        if refused := poll_refusal(answer, gone, VOICE):
            return refused
        data, code = answer.json_object(), answer.status_code
        if data is None or not isinstance(data.get("status"), str):
            return transient(f"malformed prediction ({code}): {excerpt(answer.body, 200)}", answer)
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
        answer = await self.send("POST", url, self.config.submit_timeout_s)
        if not isinstance(answer, Answer):
            return answer
        return refusal(answer, VOICE, "cancel") or Cancelled(answer.status_code)

    async def health(self) -> HealthOutcome:
        """Healthy when health_url answers 200. Without one (Replicate has no health
        endpoint), always healthy."""
        if not self.config.health_url:
            return Healthy("no health_url")
        return await probe_health(self.http, self.config.health_url, self.config.submit_timeout_s)
