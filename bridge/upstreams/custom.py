"""The `custom` upstream protocol: a provider described in the config (`adapter:`, schema
and languages in bridge/adapter_config.py; README "Custom adapters").

Each call builds its request from the adapter's templates, sends it with the token only
to the upstream's own origins, and reads the answer by the rules every protocol shares:

- submit: 2xx with the id at `submit.id` -> Submitted (the values of `submit.extract`
  kept with the job); 408/425/429/5xx -> Transient (Retry-After); another 4xx ->
  Rejected with the provider's text (`error_message`); no id or not JSON -> Transient.
  Inputs the templates cannot use (a placeholder without a value, a file field that is
  not base64) -> Rejected, nothing sent.
- poll: `status.http` first (a code mapped there decides the state, whatever the body);
  then 404 -> Expired, 408/425/429/5xx -> Transient, another non-2xx -> Failed; then the
  value at `status.path`, mapped by the status lists (`status.unknown` for others). A
  failed or cancelled status -> Failed with the text at `status.message`. Completed ->
  Done with the value at `result.path` of this answer, or, with `result.fetch`, Done
  without a result and fetch_result() sends that request.
- cancel: 2xx -> Cancelled; an adapter without `cancel` -> Rejected, nothing sent.
- health: `health` answering 2xx, else the upstream's health_url answering 200, else
  always healthy. A 401 or 403 is healthy too: the provider is up and refuses the
  token, so jobs fail `upstream-rejected` saying so rather than wait as `queued`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import httpx
import orjson

from bridge.adapter_config import (
    MISSING,
    AdapterConfig,
    RequestSpec,
    TemplateError,
    parse_path,
    parse_template,
    render_json,
)
from bridge.config import CustomUpstreamConfig
from bridge.net.client import LeanClient
from bridge.net.util import excerpt
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
    AUTH_REFUSED,
    MAX_CONTROL_BODY_BYTES,
    MAX_ERROR_CHARS,
    MAX_HEALTH_BODY_BYTES,
    Answer,
    HttpUpstream,
    Voice,
    health_outcome,
    poll_refusal,
    refusal,
    transient,
)

DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024


class InputsError(ValueError):
    """The client's inputs cannot become the request (the message names the field)."""


@dataclass(frozen=True, slots=True)
class Built:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None


def _json(body: bytes) -> Any:
    """The parsed body, or MISSING if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return MISSING


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def auth_headers(adapter: AdapterConfig, token: str | None) -> dict[str, str]:
    """The token as the adapter sends it (`auth.header`, `auth.format`); none without one."""
    if not token:
        return {}
    return {adapter.auth.header: parse_template(adapter.auth.format).render({"token": token})}


MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
OCTET_STREAM = "application/octet-stream"


def _file(field: str, value: Any) -> tuple[bytes, str]:
    """A multipart file's content and media type, from a base64 string or a data: URI."""
    if not isinstance(value, str):
        raise InputsError(f"{field}: a file field must be a base64 string or a data: URI")
    mime = OCTET_STREAM
    if value.startswith("data:"):
        head, _, value = value.partition(",")
        declared = head[5:].split(";")[0]
        mime = declared if MEDIA_TYPE.fullmatch(declared) else OCTET_STREAM
    try:
        return base64.b64decode(value, validate=True), mime
    except (binascii.Error, ValueError):
        raise InputsError(f"{field}: not valid base64") from None


def _quoted(name: str) -> str:
    """A name inside a Content-Disposition quoted string (as browsers escape it)."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart(fields: dict[str, str], files: dict[str, tuple[bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body (RFC 7578): the fields, then the files (named after their
    field), and its content type."""
    boundary = secrets.token_hex(16)
    out = bytearray()
    for name, text in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
        out += head.encode() + text.encode() + b"\r\n"
    for name, (content, mime) in files.items():
        q = _quoted(name)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{q}"; filename="{q}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        )
        out += head.encode() + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class CustomUpstream(HttpUpstream[CustomUpstreamConfig]):
    """One configured upstream run by its adapter; `client` is shared and passed in."""

    protocol: ClassVar[str] = "custom"
    capabilities: Capabilities  # per adapter: cancel and separate_fetch follow the config

    def __init__(
        self,
        name: str,
        config: CustomUpstreamConfig,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        super().__init__(name, config, token, client, max_result_bytes)
        a: AdapterConfig = config.adapter
        self.adapter = a
        self.capabilities = Capabilities(
            cancel=a.cancel is not None, separate_fetch=a.result.fetch is not None
        )
        self._voice = Voice(text=self._error_text)
        self._headers = {k: parse_template(v).render({}) for k, v in a.headers.items()}
        self._id = parse_path(a.submit.id)
        self._extract = {k: parse_path(p) for k, p in a.submit.extract.items()}
        self._status = parse_path(a.status.path) if a.status.path is not None else None
        self._message = parse_path(a.status.message) if a.status.message else None
        self._error = parse_path(a.error_message) if a.error_message else None
        self._result = parse_path(a.result.path)

    def auth_headers(self, token: str) -> dict[str, str]:
        return auth_headers(self.config.adapter, token)

    # ---- requests --------------------------------------------------------------------

    def _url(self, template: str, variables: dict[str, Any]) -> str:
        url = parse_template(template).render(variables, quote=lambda s: quote(s, safe=""))
        if url.startswith("/"):
            url = self.config.url.rstrip("/") + url
        try:
            scheme = httpx.URL(url).scheme
        except (httpx.InvalidURL, ValueError):
            scheme = ""
        if scheme not in ("http", "https") or not url.isprintable():
            raise TemplateError(f"{template!r} did not give an http(s) URL")
        return url

    def _body(self, spec: RequestSpec, variables: dict[str, Any]) -> tuple[bytes | None, str]:
        if spec.body is None:
            return None, ""
        body = render_json(spec.body, variables)
        if spec.encoding == "json":
            return orjson.dumps(body), "application/json"
        if not isinstance(body, dict):
            raise InputsError(f"a {spec.encoding} body must be an object")
        fields = {k: _text(v) for k, v in body.items() if k not in spec.files and v is not None}
        if spec.encoding == "form":
            return urlencode(fields).encode(), "application/x-www-form-urlencoded"
        files = {k: _file(k, body[k]) for k in spec.files if body.get(k) is not None}
        return _multipart(fields, files)

    def _build(self, spec: RequestSpec, variables: dict[str, Any], url: str | None = None) -> Built:
        """The request `spec` describes (TemplateError, InputsError when it cannot be)."""
        content, content_type = self._body(spec, variables)
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        headers |= {k: parse_template(v).render(variables) for k, v in spec.headers.items()}
        target = url if url is not None else self._url(spec.url, variables)
        return Built(spec.method, target, headers, content)

    async def _send(
        self, built: Built, timeout_s: float, limit_bytes: int = MAX_CONTROL_BODY_BYTES
    ) -> Answer | Transient:
        return await self.send(
            built.method, built.url, timeout_s, limit_bytes, built.content, built.headers
        )

    async def _send_for_result(
        self, built: Built, timeout_s: float, limit_bytes: int | None
    ) -> Answer | Transient | Failed:
        return await self.send_for_result(
            built.method, built.url, timeout_s, "the answer", built.content, built.headers,
            limit_bytes,
        )  # fmt: skip

    def _error_text(self, body: bytes, path: Any = None) -> str:
        """The provider's text in an answer: at `path` (else at error_message), else the
        body's first bytes."""
        data = _json(body)
        for p in (path, self._error):
            value = p.find(data) if p is not None and data is not MISSING else MISSING
            if value is not MISSING and value not in (None, ""):
                return _text(value)[:MAX_ERROR_CHARS]
        return excerpt(body, 512)

    @staticmethod
    def _job_variables(ref: UpstreamRef) -> dict[str, Any]:
        extracted = ref.data.get("extract")
        return {**(extracted if isinstance(extracted, dict) else {}), "id": ref.id}

    # ---- the interface ---------------------------------------------------------------

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        try:
            built = self._build(self.adapter.submit, {"inputs": inputs})
        except (TemplateError, InputsError) as e:
            return Rejected(None, f"the inputs do not fit upstream {self.name!r}: {e}")
        answer = await self._send(built, self.config.submit_timeout_s)
        if not isinstance(answer, Answer):
            return answer
        if refused := refusal(answer, self._voice):
            return refused
        code, body = answer.status_code, answer.body
        data = _json(body)
        job_id = self._id.find(data) if data is not MISSING else MISSING
        if isinstance(job_id, bool) or not isinstance(job_id, str | int) or job_id == "":
            why = f"no id at {self._id.text!r}"
            return transient(f"malformed submit answer ({code}, {why}): {excerpt(body, 200)}")
        extracted = {k: p.find(data) for k, p in self._extract.items()}
        kept = {k: v for k, v in extracted.items() if v is not MISSING}
        return Submitted(UpstreamRef(str(job_id), {"extract": kept}), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        variables = self._job_variables(ref)
        try:
            built = self._build(self.adapter.poll, variables)
        except (TemplateError, InputsError) as e:
            return Failed(f"cannot poll: {e}")
        inline = self.adapter.result.fetch is None
        limit = self.max_result_bytes if inline else MAX_CONTROL_BODY_BYTES
        answer = await self._send_for_result(built, self.config.poll.timeout_s, limit)
        if not isinstance(answer, Answer):
            return answer
        return self._poll_outcome(ref, variables, answer)

    def _refusal(self, answer: Answer, what: str) -> Expired | Failed | Transient | None:
        """A poll or result fetch that did not answer 2xx (404: the provider forgot `what`)."""
        code = answer.status_code
        gone = f"upstream {what} not found: {self._error_text(answer.body)}" if code == 404 else ""
        return poll_refusal(answer, gone, self._voice)

    def _poll_outcome(
        self, ref: UpstreamRef, variables: dict[str, Any], answer: Answer
    ) -> PollOutcome:
        code, body, status = answer.status_code, answer.body, self.adapter.status
        state, value = status.http.get(code), None
        if state is None and (refused := self._refusal(answer, "job")):
            return refused
        data = _json(body)
        if state is None:
            if data is MISSING and self._status is not None:
                return transient(f"malformed status answer: {excerpt(body, 200)}", answer)
            value = self._status.find(data) if self._status is not None else MISSING
            if value is MISSING and self._status is not None:
                why = f"no status at {self._status.text!r}"
                return transient(f"malformed status answer ({why}): {excerpt(body, 200)}")
            state = status.state_of(value) or status.unknown
        if state == "running":
            said = _text(value) if value not in (None, MISSING) else f"HTTP {code}"
            return Running(code, said[:100])
        if state in ("failed", "cancelled"):
            return Failed(self._failure(body, state, value, code), code)
        return self._completed(ref, variables, data, answer)

    def _failure(self, body: bytes, state: str, value: Any, code: int) -> str:
        said = _text(value) if value not in (None, MISSING) else f"HTTP {code}"
        text = self._error_text(body, self._message) if body else ""
        text = text or f"the provider reported {said}"
        return (f"cancelled at the provider: {text}" if state == "cancelled" else text)[
            :MAX_ERROR_CHARS
        ]

    def _completed(
        self, ref: UpstreamRef, variables: dict[str, Any], data: Any, answer: Answer
    ) -> PollOutcome:
        code, fetch = answer.status_code, self.adapter.result.fetch
        if fetch is None:
            return self._done_inline(data, answer)
        try:
            url = self._url(fetch.url, {**variables, "answer": data})
        except TemplateError as e:
            return transient(f"completed, but the result URL: {e}", answer)
        return Done(fetch_ref=UpstreamRef(ref.id, {**ref.data, "fetch_url": url}), status_code=code)

    def _done_inline(self, data: Any, answer: Answer) -> PollOutcome:
        if data is MISSING:
            return transient(f"malformed result: {excerpt(answer.body, 200)}", answer)
        if not self._result.steps:
            return Done(result=answer.body, status_code=answer.status_code)
        result = self._result.find(data)
        if result is MISSING:
            why = f"completed without a result at {self._result.text!r}"
            return transient(why, answer)
        return Done(result=orjson.dumps(result), status_code=answer.status_code)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        fetch, url = self.adapter.result.fetch, ref.data.get("fetch_url")
        if fetch is None or not isinstance(url, str):
            return Failed("no result request to send (the adapter has no result.fetch)")
        try:
            built = self._build(fetch, self._job_variables(ref), url=url)
        except (TemplateError, InputsError) as e:
            return Failed(f"cannot fetch the result: {e}")
        answer = await self._send_for_result(built, self.config.poll.timeout_s, None)
        if not isinstance(answer, Answer):
            return answer
        if refused := self._refusal(answer, "result"):
            return refused
        done = self._done_inline(_json(answer.body), answer)
        if isinstance(done, Done) and done.result is not None:
            return Fetched(done.result, answer.status_code)
        return done if isinstance(done, Transient) else transient("malformed result", answer)

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        spec = self.adapter.cancel
        if spec is None:
            return Rejected(None, f"upstream {self.name!r} has no cancel in its adapter")
        try:
            built = self._build(spec, self._job_variables(ref))
        except (TemplateError, InputsError) as e:
            return Rejected(None, f"cannot cancel: {e}")
        answer = await self._send(built, self.config.submit_timeout_s)
        if not isinstance(answer, Answer):
            return answer
        return refusal(answer, self._voice, "cancel") or Cancelled(answer.status_code)

    def health_request(self) -> Built:
        """The `health` request, else a GET of health_url, else of url; without the token
        (TemplateError if it cannot be built)."""
        spec = self.adapter.health
        if spec is not None:
            return self._build(spec, {})
        url = self.config.health_url or self.config.url
        return Built("GET", url, dict(self._headers), None)

    async def health(self) -> HealthOutcome:
        """Healthy when `health` answers 2xx (else health_url 200; else always)."""
        spec = self.adapter.health
        if spec is None and not self.config.health_url:
            return Healthy("no health check")
        try:
            built = self.health_request()
        except (TemplateError, InputsError) as e:
            return Transient(f"cannot check health: {e}")
        answer = await self._send(built, self.config.submit_timeout_s, MAX_HEALTH_BODY_BYTES)
        if not isinstance(answer, Answer):
            return answer
        # up, but refusing the token (401/403): jobs fail upstream-rejected
        return health_outcome(answer, any_2xx=spec is not None, refused_is_up=AUTH_REFUSED)
