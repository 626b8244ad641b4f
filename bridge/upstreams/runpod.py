"""The `runpod` upstream protocol (CONTRACT §5b): RunPod serverless queue endpoints.

`url` is the endpoint's base, `https://api.runpod.ai/v2/<endpoint_id>`; requests carry
`Authorization: Bearer <key>` as RunPod's SDK sends it.

- submit: `POST {url}/run` with `{"input": inputs}` (plus `"webhook"` for push, and the
  configured `policy`) answers `{"id", "status": "IN_QUEUE"}`.
- poll: `GET {url}/status/{id}`: IN_QUEUE / IN_PROGRESS are running; COMPLETED carries the
  `output` inline (the job's result, so Done comes with it); FAILED gives its `error` text,
  TIMED_OUT and CANCELLED fail too. 404 once RunPod forgot the job (results are kept 30
  minutes after completion): expired.
- cancel: `POST {url}/cancel/{id}`; health: `GET {url}/health` (or `health_url`), 200.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from bridge.config import RunpodUpstreamConfig
from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, describe_error
from bridge.upstreams.base import (
    Cancelled,
    CancelOutcome,
    Capabilities,
    Done,
    Expired,
    Failed,
    Fetched,
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
from bridge.upstreams.httpjson import (
    REQUEST_ERRORS,
    Exchange,
    error_text,
    is_transient_status,
    json_object,
    message_of,
    transient,
)

RUNNING_STATUSES = frozenset({"IN_QUEUE", "IN_PROGRESS", "RUNNING"})
ENDED_WITHOUT_OUTPUT = {
    "FAILED": "the job failed at RunPod",
    "TIMED_OUT": "the job timed out at RunPod",
    "CANCELLED": "the job was cancelled at RunPod",
}
JSON = {"Content-Type": "application/json"}
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


class RunpodUpstream:
    """One RunPod serverless endpoint; `client` is shared and passed in."""

    protocol: ClassVar[str] = "runpod"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True, push=True)

    def __init__(
        self,
        name: str,
        config: RunpodUpstreamConfig,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.config = config
        self.max_result_bytes = max_result_bytes
        self._base = config.url.rstrip("/")
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = Exchange(client, auth, [config.url, *filter(None, [config.health_url])])

    def __repr__(self) -> str:  # never show the token
        return f"RunpodUpstream({self.name!r}, {self.config.url!r})"

    def _job_url(self, action: str, ref: UpstreamRef) -> str:
        return f"{self._base}/{action}/{quote(ref.id, safe='')}"

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        body: dict[str, Any] = {"input": inputs}
        if push_url:
            body["webhook"] = push_url
        if self.config.policy:
            body["policy"] = self.config.policy
        try:
            response, answer = await self._http.request(
                "POST",
                f"{self._base}/run",
                self.config.submit_timeout_s,
                content=orjson.dumps(body),
                headers=JSON,
            )
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if is_transient_status(code):
            return transient(f"RunPod answered {code}", response)
        if code in (401, 403):
            return Rejected(code, f"RunPod refused the API key ({code}): {error_text(answer)}")
        if not 200 <= code < 300:
            return Rejected(code, f"RunPod refused the job ({code}): {error_text(answer)}")
        data = json_object(answer)
        job_id = data.get("id") if data else None
        if not isinstance(job_id, str) or not job_id:
            return transient(f"malformed /run answer ({code}): {error_text(answer)}", response)
        return Submitted(UpstreamRef(job_id, {}), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        try:
            response, answer = await self._http.request(
                "GET",
                self._job_url("status", ref),
                self.config.poll.timeout_s,
                self.max_result_bytes,  # COMPLETED carries the output
            )
        except BodyTooLarge as e:
            return Failed(f"RunPod's answer with the output: {e}")
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if code == 404:
            return Expired(
                f"RunPod no longer knows job {ref.id} (results are kept 30 minutes)", code
            )
        if is_transient_status(code):
            return transient(f"RunPod answered {code}", response)
        if not 200 <= code < 300:
            return Failed(f"RunPod answered {code}: {error_text(answer)}", code)
        data = json_object(answer)
        status = data.get("status") if data else None
        if data is None or not isinstance(status, str):
            return transient(f"malformed /status answer: {error_text(answer)}", response)
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
        try:
            response, answer = await self._http.request(
                "POST", self._job_url("cancel", ref), self.config.submit_timeout_s
            )
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if 200 <= code < 300:
            return Cancelled(code)
        if is_transient_status(code):
            return transient(f"RunPod answered {code}", response)
        return Rejected(code, f"RunPod refused the cancel ({code}): {error_text(answer)}")

    async def health(self) -> HealthOutcome:
        """Healthy when the endpoint's /health (or health_url) answers 200."""
        url = self.config.health_url or f"{self._base}/health"
        try:
            response, _ = await self._http.request("GET", url, self.config.submit_timeout_s)
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if code == 200:
            return Healthy(f"health answered {code}", code)
        return transient(f"health answered {code}", response)
