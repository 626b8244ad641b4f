"""JSON APIs (openai, gemini) on top of httpjson's exchange: a JSON body in, the answer read
whole with when to retry it (Retry-After, or a provider's hint in the body such as Google's
RetryInfo), and how an answer that is not a 2xx becomes an outcome (CONTRACT §5b: 404 is
expired, 408/425/429/5xx are transient, any other 4xx carries the provider's error text)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.net.client import LeanClient
from bridge.net.util import parse_retry_after
from bridge.upstreams.base import Expired, Failed, Rejected, Transient
from bridge.upstreams.httpjson import Exchange, error_text, is_transient_status, json_object


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer, read whole."""

    status_code: int
    body: bytes
    retry_after_s: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None if it is not one."""
        return json_object(self.body)


class JsonApi:
    """Requests to one provider with its credential headers (only to the configured
    origins), shared client passed in. `retry_hint` reads when to retry from the body of a
    transient answer without Retry-After."""

    def __init__(
        self,
        client: LeanClient,
        auth: dict[str, str],
        configured_urls: Iterable[str | None],
        retry_hint: Callable[[bytes], float | None] | None = None,
    ) -> None:
        self.exchange = Exchange(client, auth, [u for u in configured_urls if u])
        self._retry_hint = retry_hint

    def __repr__(self) -> str:  # never show the credential
        return "JsonApi()"

    async def request(
        self, method: str, url: str, timeout_s: float, limit_bytes: int, payload: Any = None
    ) -> Answer:
        """Send (a JSON body when payload is not None) and read the answer; raises one of
        httpjson.REQUEST_ERRORS when there is none."""
        content, headers = None, {}
        if payload is not None:
            content, headers = orjson.dumps(payload), {"Content-Type": "application/json"}
        response, body = await self.exchange.request(
            method, url, timeout_s, limit_bytes, content, headers
        )
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        if retry_after_s is None and self._retry_hint and is_transient_status(response.status_code):
            retry_after_s = self._retry_hint(body)
        return Answer(response.status_code, body, retry_after_s)


def transient(reason: str, answer: Answer | None = None) -> Transient:
    if answer is None:
        return Transient(reason)
    return Transient(reason, answer.status_code, answer.retry_after_s)


def _transient_answer(answer: Answer) -> Transient:
    return transient(f"upstream answered {answer.status_code}: {error_text(answer.body)}", answer)


def submit_refusal(answer: Answer) -> Rejected | Transient | None:
    """A submit (or cancel) that did not answer 2xx: transient, or rejected with the
    provider's text."""
    if is_transient_status(answer.status_code):
        return _transient_answer(answer)
    if not answer.ok:
        return Rejected(answer.status_code, error_text(answer.body))
    return None


cancel_refusal = submit_refusal


def poll_refusal(answer: Answer, gone: str) -> Expired | Transient | Failed | None:
    """A poll that did not answer 2xx: 404 means the provider forgot the job (`gone`)."""
    code = answer.status_code
    if code == 404:
        return Expired(gone, code)
    if is_transient_status(code):
        return _transient_answer(answer)
    if not answer.ok:
        return Failed(error_text(answer.body), code)
    return None
