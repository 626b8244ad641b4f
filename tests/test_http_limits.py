"""Inbound API hardening, in process (httpx over ASGI, the suite's Valkey, real upstream
servers on 127.0.0.1): bounded body parsing (FINDINGS D3, D7, D12), result links (D4),
a stored job is never answered 500 (D6), one Authorization header, problem pages,
the OpenAPI webhooks, and a clean 500 for a bug."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.api.jsonshape import measure
from bridge.api.problems import DESCRIPTIONS, TITLES
from bridge.api.serving import start_server
from bridge.delivery.signing import ResultLinks
from tests.support.config import API_KEY, UPSTREAM_TOKEN
from tests.support.inprocess import HOOK
from tests.support.logs import captured_logs
from tests.support.problems import assert_problem

JOB_ID = "job_000000000000000000000000000"


# ---- D3: the body is measured before it is parsed ------------------------------------


def _empty_objects_body(n: int, upstream: str = "echo") -> bytes:
    """FINDINGS D3's attack: inputs holding a list of n empty objects."""
    head = f'{{"upstream":"{upstream}","callback_url":"{HOOK}","inputs":{{"k":['.encode()
    return head + b"{}," * (n - 1) + b"{}]}}"


@pytest.mark.serial  # refused within 1 s
@pytest.mark.parametrize("upstream", ["echo", "nope"])
async def test_d3_ten_mib_of_empty_objects_is_refused_before_parsing(make_api, upstream):
    api = await make_api()
    body = _empty_objects_body(3_495_000, upstream)
    assert len(body) <= 10 * 1024 * 1024
    started = time.perf_counter()
    r = await api.post_raw(body)
    took_s = time.perf_counter() - started
    problem = assert_problem(r, 413, "payload-too-large")
    assert "JSON values" in problem["detail"]
    print(f"10 MiB of 3.5 M empty objects refused in {took_s * 1000:.0f} ms")
    assert took_s < 1.0  # before: 3.4 s (202), or 1.9 s before the 404 of an unknown upstream


async def test_d3_values_limit_is_configurable_and_exact(make_api):
    api = await make_api(listen__max_json_values=100)
    # 3 members of the body + 1 of inputs + 96 elements = 100: at the limit
    r = await api.submit(inputs={"k": list(range(96))})
    assert r.status_code == 202, r.text
    # commas and brackets inside strings are not values
    r = await api.submit(inputs={"text": ",[{" * 10_000, "k": [{"a": 1}] * 47})  # 99
    assert r.status_code == 202, r.text
    assert_problem(await api.submit(inputs={"k": list(range(97))}), 413, "payload-too-large")


# ---- D7: metadata nests at most 64 levels, like inputs ----------------------------------


@pytest.mark.parametrize("levels", [65, 252, 300])
async def test_d7_deep_metadata_is_refused_naming_the_field(make_api, levels):
    api = await make_api()
    body = (
        f'{{"upstream":"echo","inputs":{{}},"callback_url":"{HOOK}","metadata":{{"a":'.encode()
        + b"[" * levels
        + b"]" * levels
        + b"}}"
    )
    problem = assert_problem(await api.post_raw(body), 400, "invalid-request")
    assert problem["detail"].startswith("metadata ")


async def test_d7_sixty_four_levels_of_inputs_and_metadata_are_accepted(make_api):
    api = await make_api()
    deep: Any = 1
    for _ in range(63):  # 63 lists inside the inputs object: 64 levels
        deep = [deep]
    r = await api.submit(inputs={"a": deep}, metadata={"a": deep})
    assert r.status_code == 202, r.text
    problem = assert_problem(await api.submit(inputs={"a": [deep]}), 400, "invalid-request")
    assert problem["detail"].startswith("inputs ")


# ---- D12: integers beyond 64 bits ----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("inputs", "18446744073709551616"),
        ("inputs", "-9223372036854775809"),
        ("metadata", "123456789012345678901234567890"),
    ],
)
async def test_d12_integers_beyond_64_bits_are_refused_naming_the_field(make_api, field, literal):
    api = await make_api()
    other = "metadata" if field == "inputs" else "inputs"
    body = (
        f'{{"upstream":"echo","callback_url":"{HOOK}","{other}":{{"x":1}},'
        f'"{field}":{{"n":{literal}}}}}'
    ).encode()
    problem = assert_problem(await api.post_raw(body), 400, "invalid-request")
    assert problem["detail"].startswith(f"{field}: the integer {literal[:20]}")


async def test_d12_what_fits_or_is_not_an_integer_is_kept_exactly(make_api):
    api = await make_api()
    body = (
        f'{{"upstream":"echo","callback_url":"{HOOK}","inputs":{{"max":18446744073709551615,'
        '"min":-9223372036854775808,"float":1e20,"big_float":123456789012345678901.5,'
        '"in_text":"id 123456789012345678901234567890 end","id":"12345678901234567890123"}}'
    ).encode()
    r = await api.post_raw(body)
    assert r.status_code == 202, r.text
    stored = orjson.loads((await api.rt.store.get_job(r.json()["id"])).inputs)
    assert stored["max"] == 2**64 - 1 and stored["min"] == -(2**63)
    assert stored["in_text"] == "id 123456789012345678901234567890 end"


# ---- the measurement itself ----------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab,[]{}"\\:é\n')),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet=st.sampled_from('k,[]{}"\\')), inner, max_size=4)
    ),
    max_leaves=30,
)


def _reference(value: Any) -> tuple[int, int]:
    """(values, depth) as measure defines them, counted on the parsed value."""
    if isinstance(value, list | dict):
        items = list(value.values()) if isinstance(value, dict) else value
        counts = [_reference(v) for v in items]
        values = max(len(items), 1) + sum(c[0] for c in counts)
        return values, 1 + max((c[1] for c in counts), default=0)
    return 0, 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 40), st.integers(0, 6))
def test_measure_is_exact_at_the_limits_whatever_the_strings_hold(value, max_values, max_depth):
    """Over a limit by measure if and only if over it by the parsed value."""
    body = orjson.dumps(value)
    values, depth = _reference(value)
    shape = measure(body, max_values, max_depth)
    assert (shape.values > max_values) == (values > max_values)
    if values <= max_values:
        assert (shape.depth > max_depth) == (depth > max_depth)


# ---- D4: result links -----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "expires=%C2%B2&sig=x",  # '²'.isdigit() is True
        "expires=" + "9" * 5000 + "&sig=x",  # int() refuses more than 4300 digits
        "expires=9999999999&sig=%C3%A9",  # non-ASCII sig: compare_digest raised TypeError
        "expires=%EF%BC%99%EF%BC%99&sig=x",  # fullwidth digits
        "expires=&sig=",
        "",
    ],
)
async def test_d4_malformed_result_links_get_403_problem_never_500(make_api, query):
    api = await make_api()
    async with httpx.AsyncClient(
        transport=api.client._transport, base_url="http://bridge"
    ) as anon:  # no API key: this endpoint is public
        r = await anon.get(f"/v1/results/{JOB_ID}?{query}")
    assert_problem(r, 403, "invalid-link")


async def test_d4_a_result_link_has_exactly_one_spelling(make_api):
    api = await make_api()
    url = api.rt.links.url(JOB_ID, int(time.time()) + 600)
    path = url[url.index("/v1/") :]
    expires = path.split("expires=")[1].split("&")[0]
    sig = path.split("sig=")[1]
    r = await api.client.get(path)
    assert_problem(r, 404, "not-found")  # a valid link to a job that does not exist
    for altered in [
        path.replace(f"expires={expires}", f"expires=0{expires}"),  # leading zero
        f"{path}&sig={sig}",  # the signature twice
        f"{path}&expires={expires}",  # the expiry twice
        path.replace(f"sig={sig}", f"sig={sig}="),  # padding
    ]:
        assert_problem(await api.client.get(altered), 403, "invalid-link")


def test_result_links_verify_only_the_canonical_form():
    links = ResultLinks(b"k" * 32, "http://x")
    good = links._sig(JOB_ID, 2_000_000_000)
    assert links.verify(JOB_ID, "2000000000", good, now_s=0)
    assert not links.verify(JOB_ID, "02000000000", good, now_s=0)
    assert not links.verify(JOB_ID, "2000000000", good + "=", now_s=0)
    assert not links.verify(JOB_ID, "2000000000", "é" * 43, now_s=0)
    assert not links.verify(JOB_ID, "2000000000", good, now_s=2_000_000_001)


# ---- D6: a stored job is never answered 500 ------------------------------------------


@contextlib.asynccontextmanager
async def raw_upstream(answer: bytes) -> AsyncIterator[str]:
    """A hostile upstream: reads the request, answers these bytes, closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(65536), 2)
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/infer"
    finally:
        server.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 200_000 + b"\r\ncontent-length: 2\r\n\r\n{}",
    ],
    ids=["garbage", "hugeheader"],
)
async def test_d6_upstream_answering_non_http_gives_202_queued(make_api, answer):
    async with raw_upstream(answer) as url:
        api = await make_api(upstream_url=url)
        r = await api.submit()
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    assert (await api.rt.store.get_job(r.json()["id"])).status == "queued"


class BrokenUpstream:
    """An upstream whose submit has a bug (stands in for any unforeseen exception)."""

    def __init__(self, real: Any) -> None:
        self.config, self.name = real.config, real.name

    async def submit(self, inputs: Any) -> Any:
        raise ZeroDivisionError("a bug")


async def test_d6_any_exception_during_submit_gives_202_queued(make_api):
    api = await make_api()
    api.rt.upstreams["echo"] = BrokenUpstream(api.rt.upstreams["echo"])  # type: ignore[assignment]
    r = await api.submit()
    assert r.status_code == 202, r.text
    assert (await api.rt.store.get_job(r.json()["id"])).status == "queued"


async def test_upstream_rejection_echo_never_shows_the_token(make_api):
    async def echo_headers(request: Request) -> Response:
        seen = f"bad input; you sent Authorization: {request.headers['authorization']}"
        return Response(seen + " and token=" + UPSTREAM_TOKEN, 400)

    upstream = await start_server(
        Starlette(routes=[Route("/infer", echo_headers, methods=["POST"])])
    )
    try:
        api = await make_api(upstream_url=f"{upstream.url}/infer")
        problem = assert_problem(await api.submit(), 422, "upstream-rejected")
    finally:
        await upstream.stop()
    assert problem["upstream_status"] == 400
    assert "bad input" in problem["upstream_body"]
    assert UPSTREAM_TOKEN not in problem["upstream_body"]
    assert UPSTREAM_TOKEN[:6] not in problem["upstream_body"]


# ---- authentication ------------------------------------------------------------------


async def test_two_authorization_headers_are_refused(make_api):
    api = await make_api()
    async with httpx.AsyncClient(transport=api.client._transport, base_url="http://b") as anon:
        headers = [("authorization", f"Bearer {API_KEY}"), ("authorization", "Bearer other")]
        assert_problem(await anon.get(f"/v1/jobs/{JOB_ID}", headers=headers), 401, "unauthorized")
        headers.reverse()
        assert_problem(await anon.get(f"/v1/jobs/{JOB_ID}", headers=headers), 401, "unauthorized")
        one = {"authorization": f"bEaReR {API_KEY}"}  # the scheme is case-insensitive
        assert_problem(await anon.get(f"/v1/jobs/{JOB_ID}", headers=one), 404, "not-found")


# ---- problem pages, OpenAPI webhooks, a clean 500 ------------------------------------


async def test_every_problem_type_resolves_to_a_page(make_api):
    api = await make_api()
    assert set(DESCRIPTIONS) == set(TITLES)
    for code in TITLES:
        r = await api.client.get(f"/problems/{code}")
        assert r.status_code == 200 and r.json()["type"] == f"/problems/{code}"
        assert r.json()["description"]
        page = await api.client.get(f"/problems/{code}", headers={"accept": "text/html"})
        assert page.headers["content-type"].startswith("text/html")
        assert f"<code>{code}</code>" in page.text
    assert_problem(await api.client.get("/problems/nope"), 404, "not-found")
    # a problem's type names a page that exists
    problem = assert_problem(await api.submit(upstream="nope"), 404, "unknown-upstream")
    assert (await api.client.get(problem["type"])).status_code == 200


async def test_openapi_describes_the_callback_as_webhooks(make_stack):
    s = await make_stack()
    spec = (await s.client.get("/openapi.json")).json()
    assert set(spec["webhooks"]) == {"job.completed", "job.failed"}
    post = spec["webhooks"]["job.completed"]["post"]
    assert {p["name"] for p in post["parameters"]} == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    delivery = s.receiver.succeeded()[0]
    schemas = spec["components"]["schemas"]
    jsonschema.validate(
        delivery.event, {**schemas["WebhookEvent"], "components": spec["components"]}
    )
    for p in post["parameters"]:
        assert jsonschema.Draft202012Validator(p["schema"]).is_valid(delivery.headers[p["name"]])


async def test_a_bug_answers_problem_500_and_logs_one_line_without_traceback_spam(make_api, capsys):
    async def buggy(request: Request) -> Response:
        raise RuntimeError("boom")

    with captured_logs() as buf:
        api = await make_api(routes=(Route("/buggy", buggy),))
        r = await api.client.get("/buggy")
    problem = assert_problem(r, 500, "internal-error")
    assert "boom" not in r.text and "Traceback" not in r.text
    lines = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    errors = [line for line in lines if line["event"] == "unhandled error"]
    assert len(errors) == 1 and errors[0]["error_type"] == "RuntimeError"
    assert "Exception in ASGI application" not in capsys.readouterr().err
    assert problem["detail"]
