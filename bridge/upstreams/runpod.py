"""The `runpod` upstream protocol (CONTRACT §5b): RunPod serverless queue endpoints.

`url` is the endpoint's base, `https://api.runpod.ai/v2/<endpoint_id>`; requests carry
`Authorization: Bearer <key>` as RunPod's SDK sends it.

- submit: `POST {url}/run` with `{"input": inputs}` (plus `"webhook"` for push, and the
  configured `policy`) answers `{"id", "status": "IN_QUEUE"}`.
- poll: `GET {url}/status/{id}`: IN_QUEUE / IN_PROGRESS are running; COMPLETED carries the
  `output` inline (the job's result, so Done comes with it); FAILED gives its `error` text,
  TIMED_OUT and CANCELLED fail too. 404 once RunPod forgot the job (results are kept 30
  minutes after completion): expired.
- cancel: `POST {url}/cancel/{id}`; health: `GET {url}/health` (or `health_url`), 200 (a
  401/403 from /health: up, refusing the key).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from bridge.config import RunpodUpstreamConfig
from bridge.upstreams.base import (
    Cancelled,
    CancelOutcome,
    Capabilities,
    Done,
    Failed,
    Fetched,
    FetchOutcome,
    HealthOutcome,
    PollOutcome,
    Running,
    SubmitOutcome,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.httpjson import (
    AUTH_REFUSED,
    Answer,
    HttpUpstream,
    Voice,
    error_text,
    message_of,
    poll_refusal,
    probe_health,
    refusal,
    transient,
)

RUNNING_STATUSES = frozenset({"IN_QUEUE", "IN_PROGRESS", "RUNNING"})
ENDED_WITHOUT_OUTPUT = {
    "FAILED": "the job failed at RunPod",
    "TIMED_OUT": "the job timed out at RunPod",
    "CANCELLED": "the job was cancelled at RunPod",
}
VOICE = Voice("RunPod", named=True, credential="API key")
CLASS_REPR = re.compile(r"^<class '([^']*)'>$")  # str(type(err)) in the worker's report


def _handler_error(error: Any) -> Any:
    """A handler exception as the runpod worker reports it (`error` is a JSON string of
    error_type, error_message, error_traceback) becomes "Type: message"."""
    if not isinstance(error, str) or not error.startswith("{"):
        return error
    try:
        info = orjson.loads(error)
    except orjson.JSONDecodeError:
        return error
    if not isinstance(info, dict) or not info.get("error_message"):
        return info
    kind = CLASS_REPR.sub(r"\1", str(info.get("error_type") or "")).rsplit(".", 1)[-1]
    return f"{kind}: {info['error_message']}" if kind else str(info["error_message"])


def _job_error(data: dict[str, Any], status: str) -> str:
    """The text of a FAILED / TIMED_OUT / CANCELLED status: RunPod's `error`, if any."""
    error = data.get("error")
    if not error:
        return ENDED_WITHOUT_OUTPUT[status]
    text = message_of(_handler_error(error))
    return text if status == "FAILED" else f"{ENDED_WITHOUT_OUTPUT[status]}: {text}"


class RunpodUpstream(HttpUpstream[RunpodUpstreamConfig]):
    """One RunPod serverless endpoint; `client` is shared and passed in."""

    protocol: ClassVar[str] = "runpod"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True, push=True)

    def _job_url(self, action: str, ref: UpstreamRef) -> str:
        return f"{self.base}/{action}/{quote(ref.id, safe='')}"

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        body: dict[str, Any] = {"input": inputs}
        if push_url:
            body["webhook"] = push_url
        if self.config.policy:
            body["policy"] = self.config.policy
        answer = await self.send(
            "POST", f"{self.base}/run", self.config.submit_timeout_s, payload=body
        )
        if not isinstance(answer, Answer):
            return answer
        if refused := refusal(answer, VOICE, "job"):
            return refused
        data, code = answer.json_object(), answer.status_code
        job_id = data.get("id") if data else None
        if not isinstance(job_id, str) or not job_id:
            reason = f"malformed /run answer ({code}): {error_text(answer.body)}"
            return transient(reason, answer)
        return Submitted(UpstreamRef(job_id, {}), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        url, timeout_s = self._job_url("status", ref), self.config.poll.timeout_s
        # COMPLETED carries the output
        answer = await self.send_for_result(
            "GET", url, timeout_s, "RunPod's answer with the output"
        )
        if not isinstance(answer, Answer):
            return answer
        gone = f"RunPod no longer knows job {ref.id} (results are kept 30 minutes)"
        if refused := poll_refusal(answer, gone, VOICE):
            return refused
        data, code = answer.json_object(), answer.status_code
        status = data.get("status") if data else None
        if data is None or not isinstance(status, str):
            return transient(f"malformed /status answer: {error_text(answer.body)}", answer)
        if status == "COMPLETED":
            return Done(result=orjson.dumps(data.get("output")), status_code=code)
        if status in ENDED_WITHOUT_OUTPUT:
            return Failed(_job_error(data, status), code)
        return Running(code, status)  # IN_QUEUE, IN_PROGRESS, and any status to come

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        """The output comes with the poll; fetched again the same way if asked."""
        outcome = await self.poll(ref)
        if isinstance(outcome, Done):
            return Fetched(outcome.result or b"null", outcome.status_code)
        if isinstance(outcome, Running):
            return Transient(f"the job is still {outcome.detail}", outcome.status_code)
        return outcome

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        answer = await self.send("POST", self._job_url("cancel", ref), self.config.submit_timeout_s)
        if not isinstance(answer, Answer):
            return answer
        return refusal(answer, VOICE, "cancel") or Cancelled(answer.status_code)

    async def health(self) -> HealthOutcome:
        """Healthy when the endpoint's /health (or health_url) answers 200. /health refusing
        the key (401/403) is healthy too: the endpoint is up, and jobs fail
        upstream-rejected with RunPod's text instead of waiting as queued."""
        url = self.config.health_url or f"{self.base}/health"
        refused_is_up = () if self.config.health_url else AUTH_REFUSED
        return await probe_health(
            self.http, url, self.config.submit_timeout_s, refused_is_up=refused_is_up
        )
