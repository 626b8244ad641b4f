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
from bridge.net.util import BodyTooLarge, describe_error, excerpt, parse_retry_after, read_capped
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
from bridge.upstreams.octoai import REQUEST_ERRORS, origin

MAX_CONTROL_BODY_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 1000
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


def _is_transient(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def _transient(reason: str, response: httpx.Response | None = None) -> Transient:
    if response is None:
        return Transient(reason)
    retry_after_s = parse_retry_after(response.headers.get("retry-after"))
    return Transient(reason, response.status_code, retry_after_s)


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


class CustomUpstream:
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
        self.name = name
        self.config = config
        self.client = client
        self.max_result_bytes = max_result_bytes
        a: AdapterConfig = config.adapter
        self.adapter = a
        self.capabilities = Capabilities(
            cancel=a.cancel is not None, separate_fetch=a.result.fetch is not None
        )
        auth = parse_template(a.auth.format).render({"token": token}) if token else None
        self._auth = {a.auth.header: auth} if auth is not None else {}
        configured = [config.url, *([config.health_url] if config.health_url else [])]
        self._auth_origins = {origin(u) for u in configured}
        self._headers = {k: parse_template(v).render({}) for k, v in a.headers.items()}
        self._id = parse_path(a.submit.id)
        self._extract = {k: parse_path(p) for k, p in a.submit.extract.items()}
        self._status = parse_path(a.status.path) if a.status.path is not None else None
        self._message = parse_path(a.status.message) if a.status.message else None
        self._error = parse_path(a.error_message) if a.error_message else None
        self._result = parse_path(a.result.path)

    def __repr__(self) -> str:  # never show the token
        return f"CustomUpstream({self.name!r}, {self.config.url!r})"

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
        self, built: Built, timeout_s: float, limit_bytes: int
    ) -> tuple[httpx.Response, bytes]:
        """Send it; the token only to the configured origins, never to a URL that a
        provider's answer named on another origin."""
        auth = self._auth if origin(built.url) in self._auth_origins else {}
        headers = {**built.headers, **auth}
        response = await self.client.send_lean(
            built.method, built.url, timeout_s, headers, content=built.content
        )
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        return response, body

    def _error_text(self, body: bytes, path: Any = None) -> str:
        """The provider's text in an answer: at `path` (else at error_message), else the
        body's first bytes."""
        data = _json(body)
        for p in (path, self._error):
            value = p.find(data) if p is not None and data is not MISSING else MISSING
            if value is not MISSING and value not in (None, ""):
                return _text(value)[:MAX_MESSAGE_CHARS]
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
        try:
            response, body = await self._send(
                built, self.config.submit_timeout_s, MAX_CONTROL_BODY_BYTES
            )
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if _is_transient(code):
            return _transient(f"upstream answered {code}", response)
        if not 200 <= code < 300:
            return Rejected(code, self._error_text(body))
        data = _json(body)
        job_id = self._id.find(data) if data is not MISSING else MISSING
        if isinstance(job_id, bool) or not isinstance(job_id, str | int) or job_id == "":
            why = f"no id at {self._id.text!r}"
            return _transient(f"malformed submit answer ({code}, {why}): {excerpt(body, 200)}")
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
        try:
            response, body = await self._send(built, self.config.poll.timeout_s, limit)
        except BodyTooLarge as e:
            return Failed(str(e))
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        return self._poll_outcome(ref, variables, response, body)

    def _poll_outcome(
        self, ref: UpstreamRef, variables: dict[str, Any], response: httpx.Response, body: bytes
    ) -> PollOutcome:
        code, status = response.status_code, self.adapter.status
        state, value = status.http.get(code), None
        if state is None:
            if code == 404:
                return Expired(f"upstream job not found: {self._error_text(body)}", code)
            if _is_transient(code):
                return _transient(f"upstream answered {code}", response)
            if not 200 <= code < 300:
                return Failed(self._error_text(body), code)
        data = _json(body)
        if state is None:
            if data is MISSING and self._status is not None:
                return _transient(f"malformed status answer: {excerpt(body, 200)}", response)
            value = self._status.find(data) if self._status is not None else MISSING
            if value is MISSING and self._status is not None:
                why = f"no status at {self._status.text!r}"
                return _transient(f"malformed status answer ({why}): {excerpt(body, 200)}")
            state = status.state_of(value) or status.unknown
        if state == "running":
            said = _text(value) if value not in (None, MISSING) else f"HTTP {code}"
            return Running(code, said[:100])
        if state in ("failed", "cancelled"):
            return Failed(self._failure(body, state, value, code), code)
        return self._completed(ref, variables, data, body, response)

    def _failure(self, body: bytes, state: str, value: Any, code: int) -> str:
        said = _text(value) if value not in (None, MISSING) else f"HTTP {code}"
        text = self._error_text(body, self._message) if body else ""
        text = text or f"the provider reported {said}"
        return (f"cancelled at the provider: {text}" if state == "cancelled" else text)[
            :MAX_MESSAGE_CHARS
        ]

    def _completed(
        self,
        ref: UpstreamRef,
        variables: dict[str, Any],
        data: Any,
        body: bytes,
        response: httpx.Response,
    ) -> PollOutcome:
        code, fetch = response.status_code, self.adapter.result.fetch
        if fetch is None:
            return self._done_inline(data, body, response)
        try:
            url = self._url(fetch.url, {**variables, "answer": data})
        except TemplateError as e:
            return _transient(f"completed, but the result URL: {e}", response)
        return Done(fetch_ref=UpstreamRef(ref.id, {**ref.data, "fetch_url": url}), status_code=code)

    def _done_inline(self, data: Any, body: bytes, response: httpx.Response) -> PollOutcome:
        if data is MISSING:
            return _transient(f"malformed result: {excerpt(body, 200)}", response)
        if not self._result.steps:
            return Done(result=body, status_code=response.status_code)
        result = self._result.find(data)
        if result is MISSING:
            why = f"completed without a result at {self._result.text!r}"
            return _transient(why, response)
        return Done(result=orjson.dumps(result), status_code=response.status_code)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        fetch, url = self.adapter.result.fetch, ref.data.get("fetch_url")
        if fetch is None or not isinstance(url, str):
            return Failed("no result request to send (the adapter has no result.fetch)")
        try:
            built = self._build(fetch, self._job_variables(ref), url=url)
            response, body = await self._send(
                built, self.config.poll.timeout_s, self.max_result_bytes
            )
        except (TemplateError, InputsError) as e:
            return Failed(f"cannot fetch the result: {e}")
        except BodyTooLarge as e:
            return Failed(str(e))
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if code == 404:
            return Expired(f"upstream result not found: {self._error_text(body)}", code)
        if _is_transient(code):
            return _transient(f"upstream answered {code}", response)
        if not 200 <= code < 300:
            return Failed(self._error_text(body), code)
        done = self._done_inline(_json(body), body, response)
        if isinstance(done, Done) and done.result is not None:
            return Fetched(done.result, code)
        return done if isinstance(done, Transient) else _transient("malformed result", response)

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        spec = self.adapter.cancel
        if spec is None:
            return Rejected(None, f"upstream {self.name!r} has no cancel in its adapter")
        try:
            built = self._build(spec, self._job_variables(ref))
            response, body = await self._send(
                built, self.config.submit_timeout_s, MAX_CONTROL_BODY_BYTES
            )
        except (TemplateError, InputsError) as e:
            return Rejected(None, f"cannot cancel: {e}")
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if 200 <= code < 300:
            return Cancelled(code)
        if _is_transient(code):
            return _transient(f"upstream answered {code}", response)
        return Rejected(code, self._error_text(body))

    async def health(self) -> HealthOutcome:
        """Healthy when `health` answers 2xx (else health_url 200; else always)."""
        spec = self.adapter.health
        if spec is None and not self.config.health_url:
            return Healthy("no health check")
        try:
            if spec is not None:
                built = self._build(spec, {})
            else:
                built = Built("GET", str(self.config.health_url), dict(self._headers), None)
            response, _ = await self._send(built, self.config.submit_timeout_s, 64 * 1024)
        except (TemplateError, InputsError) as e:
            return Transient(f"cannot check health: {e}")
        except REQUEST_ERRORS as e:
            return _transient(describe_error(e))
        code = response.status_code
        if (200 <= code < 300) if spec is not None else code == 200:
            return Healthy(f"health answered {code}", code)
        if code in (401, 403):  # up, but refuses the token: jobs fail upstream-rejected
            return Healthy(f"health answered {code}: the provider refuses the token", code)
        return _transient(f"health answered {code}", response)
