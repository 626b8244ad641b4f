"""The HTTP server layer with raw sockets against a real uvicorn on 127.0.0.1: request heads
are capped in size (FINDINGS D5) and time, bodies in time, a client leaving mid-body is no
traceback (D10), uvicorn's own 400s are problem+json, bodies in flight share a memory
budget; and the memory of a `pushbridge serve` process under D3's attack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import yaml

from bridge.api.serving import start_server
from bridge.dev.emulators.octoai import EmulatorSettings, create_emulator_app
from bridge.store.embedded import free_port
from tests.support.config import API_KEY, ENV, base_config
from tests.support.logs import captured_logs

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int) -> Conn:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(
    reader: asyncio.StreamReader, timeout_s: float = 5
) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body (by Content-Length)."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True if the server closes the connection (EOF or reset) within timeout_s."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def assert_problem_bytes(status: int, headers: dict, body: bytes, want: int, code: str) -> None:
    assert status == want, (status, body[:200])
    assert headers["content-type"] == "application/problem+json"
    problem = orjson.loads(body)
    assert problem["code"] == code and problem["type"] == f"/problems/{code}"


AUTH_POST = (
    "POST /v1/jobs HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {key}\r\n"
    "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
)


# ---- D5: the request head is capped -----------------------------------------------


async def _flood_head(port: int, head: bytes, filler: bytes, total_bytes: int) -> tuple[int, int]:
    """Send a head then `filler` up to total_bytes, then end the head; returns (status of the
    answer, bytes the server took before it answered or closed)."""
    reader, writer = await connect(port)
    sent = 0
    response: asyncio.Task = asyncio.create_task(read_response(reader, 120))
    try:
        writer.write(head)
        while not response.done():
            writer.write(filler)
            await writer.drain()
            sent += len(filler)
            if sent >= total_bytes:
                break
        writer.write(b"\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass
    status, headers, body = await response
    writer.close()
    if status != 200:
        assert_problem_bytes(status, headers, body, 431, "header-too-large")
    return status, sent


async def test_d5_an_oversized_header_gets_431_without_being_read(make_stack):
    s = await make_stack()
    started = time.perf_counter()
    status, sent = await _flood_head(
        s.bridge.port, b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Flood: ", b"a" * 65536, 64 << 20
    )
    took_s = time.perf_counter() - started
    print(f"64 MiB header: {status} after {sent >> 10} KiB sent, {took_s:.2f} s")
    assert status == 431  # before: 200 after reading all 64 MiB (2.1 s; 256 MiB took 59.5 s)
    assert sent < 8 << 20  # refused at 64 KiB; the rest is what was in flight
    assert (await s.client.get("/healthz")).status_code == 200


async def test_d5_many_headers_count_together_and_a_large_head_under_the_cap_passes(make_stack):
    s = await make_stack(listen__max_header_bytes=16 * 1024)
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(200))  # ~100 KiB
    status, _ = await _flood_head(s.bridge.port, b"GET /healthz HTTP/1.1\r\nHost: b\r\n", many, 0)
    assert status == 431
    under = b"X-Big: " + b"v" * 12_000
    status, _ = await _flood_head(s.bridge.port, b"GET /healthz HTTP/1.1\r\nHost: b\r\n", under, 0)
    assert status == 200


async def test_d5_the_cap_holds_for_the_next_request_of_a_keep_alive_connection(make_stack):
    s = await make_stack()
    reader, writer = await connect(s.bridge.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert_problem_bytes(status, headers, body, 431, "header-too-large")
    writer.close()


# ---- D10: incomplete requests time out; leaving mid-body is quiet -------------------


async def test_d10_a_silent_connection_is_closed(make_stack):
    s = await make_stack(listen__header_timeout_s=0.5)
    reader, writer = await connect(s.bridge.port)
    assert await closed_by_server(reader, 3)  # before: still open at 50 s
    writer.close()


async def test_d10_slowloris_gets_408_and_is_closed(make_stack):
    s = await make_stack(listen__header_timeout_s=0.6)
    reader, writer = await connect(s.bridge.port)
    answer = asyncio.create_task(read_response(reader, 5))
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    with contextlib.suppress(ConnectionError):
        for i in range(30):  # one header line every 0.2 s: 6 s if nothing stops it
            if answer.done():
                break
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            await writer.drain()
            await asyncio.sleep(0.2)
    status, headers, body = await answer
    assert time.monotonic() - started < 2
    assert_problem_bytes(status, headers, body, 408, "request-timeout")
    assert await closed_by_server(reader, 2)
    writer.close()


async def test_keep_alive_requests_each_get_the_full_head_time(make_stack):
    s = await make_stack(listen__header_timeout_s=0.5)
    reader, writer = await connect(s.bridge.port)
    for _ in range(3):  # 3 requests, 0.3 s apart: 0.9 s on one connection is fine
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 200
        await asyncio.sleep(0.3)
    writer.close()


async def test_d10_a_stalled_body_gets_408_and_is_closed(make_stack):
    s = await make_stack(listen__body_timeout_s=0.5)
    reader, writer = await connect(s.bridge.port)
    writer.write(AUTH_POST.format(key=API_KEY, length=10_000).encode() + b"{" + b" " * 5000)
    status, headers, body = await read_response(reader, 3)  # before: no answer at 60 s
    assert_problem_bytes(status, headers, body, 408, "request-timeout")
    assert headers["connection"] == "close"
    assert await closed_by_server(reader, 2)
    writer.close()


async def test_d10_a_client_leaving_mid_body_is_one_info_line(make_stack, caplog):
    with captured_logs() as buf:
        s = await make_stack()
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                _, writer = await connect(s.bridge.port)
                writer.write(AUTH_POST.format(key=API_KEY, length=10_000).encode() + b"{ ")
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.close()
            await asyncio.sleep(0.3)
            assert (await s.client.get("/healthz")).status_code == 200
    assert "Exception in ASGI application" not in caplog.text  # before: 3 tracebacks
    assert "Traceback" not in caplog.text + buf.getvalue()
    assert buf.getvalue().count("client disconnected mid-request") == 3


async def test_uvicorn_s_own_400_is_problem_json(make_stack):
    s = await make_stack()
    reader, writer = await connect(s.bridge.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert_problem_bytes(status, headers, body, 400, "invalid-request")
    writer.close()


# ---- the memory budget of bodies in flight ------------------------------------------


async def test_bodies_beyond_the_memory_budget_wait_then_get_503(make_stack):
    # a body reserves its declared length while it is read: 40 kB + 20 kB > 50 kB
    s = await make_stack(listen__body_memory_bytes=50_000, listen__body_timeout_s=4)
    _, first = await connect(s.bridge.port)
    first.write(AUTH_POST.format(key=API_KEY, length=40_000).encode() + b"{" + b" " * 100)
    await first.drain()
    await asyncio.sleep(0.2)  # the first holds its share while its body trickles in
    started = time.monotonic()
    r = await s.client.post(
        "/v1/jobs", content=b" " * 20_000, headers={"content-type": "application/json"}
    )
    waited_s = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "overloaded" and r.headers["retry-after"] == "1"
    assert 1.5 < waited_s < 3.5
    first.close()
    await asyncio.sleep(0.2)  # the first's share is given back when it ends
    assert (await s.submit()).status_code == 202


async def test_a_measured_body_reserves_its_parse_cost(make_stack):
    # 2 000 empty objects: 6 kB of bytes, but up to 200 kB once parsed (100 B a value)
    s = await make_stack(listen__body_memory_bytes=100_000, listen__body_timeout_s=4)
    _, first = await connect(s.bridge.port)
    first.write(AUTH_POST.format(key=API_KEY, length=60_000).encode() + b"{")
    await first.drain()
    await asyncio.sleep(0.2)
    r = await s.submit(inputs={"k": [{}] * 2000})
    assert r.status_code == 503, r.text
    first.close()
    await asyncio.sleep(0.2)
    assert (await s.submit(inputs={"k": [{}] * 2000})).status_code == 202  # alone, it runs


# ---- D3 measured on a real `pushbridge serve` process -------------------------------


def _attack_body(n: int = 3_495_000) -> bytes:
    head = b'{"upstream":"echo","callback_url":"http://127.0.0.1:9/ok","inputs":{"k":['
    return head + b"{}," * (n - 1) + b"{}]}}"


async def _rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 1e6


async def _attack(
    url: str, proc: psutil.Process, body: bytes, concurrent: int
) -> tuple[list[int], float, float]:
    """Send `concurrent` copies of body at once while sampling RSS and /healthz latency:
    (statuses, peak RSS in MB, worst health latency in s)."""
    peak_mb, worst_s, done = 0.0, 0.0, asyncio.Event()

    async def sample() -> None:
        nonlocal peak_mb, worst_s
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while not done.is_set():
                peak_mb = max(peak_mb, await _rss_mb(proc))
                t = time.perf_counter()
                await c.get("/healthz")
                worst_s = max(worst_s, time.perf_counter() - t)
                await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    headers = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as c:
        responses = await asyncio.gather(
            *(c.post("/v1/jobs", content=body) for _ in range(concurrent))
        )
    done.set()
    await sampler
    return [r.status_code for r in responses], max(peak_mb, await _rss_mb(proc)), worst_s


@pytest.mark.serial  # RSS and event-loop stalls of the serve process
async def test_d3_memory_of_a_serve_process_under_the_attack(tmp_path: Path, valkey):
    emu = await start_server(create_emulator_app(EmulatorSettings(duration_s=0.1)))
    port = free_port()
    raw = base_config(emu.url, listen__port=port)
    raw["upstreams"]["echo"].pop("token_env")
    raw["store"]["url"] = valkey.url
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--config",
        str(tmp_path / "config.yaml"),
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as c:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            # the server's head cap is wired from listen.max_header_bytes
            big = await c.get("/healthz", headers={"x-big": "v" * 100_000})
            assert big.status_code == 431
        proc = psutil.Process(server.pid)
        body = _attack_body()
        base_mb = await _rss_mb(proc)
        figures = []
        for concurrent in (1, 4):
            statuses, peak_mb, worst_s = await _attack(url, proc, body, concurrent)
            after_mb = await _rss_mb(proc)
            figures.append((concurrent, statuses, peak_mb, after_mb, worst_s))
            print(
                f"D3 attack x{concurrent} ({len(body) / 2**20:.1f} MiB of empty objects): "
                f"statuses {statuses}, RSS {base_mb:.0f} MB before, peak {peak_mb:.0f} MB, "
                f"after {after_mb:.0f} MB; worst /healthz latency {worst_s * 1000:.0f} ms"
            )
        for _, statuses, peak_mb, _, worst_s in figures:
            assert set(statuses) == {413}
            assert peak_mb - base_mb < 150  # before: +529 MB for one, +1.4 GB for four
            assert worst_s < 1.0  # before: 2.8 s and 5.8 s event-loop stalls
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)
        await emu.stop()


async def test_a_server_started_without_signals_leaves_the_signal_handlers_alone():
    """start_server(signals=False), the default (demo, tests): the servers are parts of a
    program that handles its signals itself; uvicorn's own capture must not replace them."""
    watched = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in watched}
    server = await start_server(create_emulator_app(EmulatorSettings()))
    try:
        assert {sig: signal.getsignal(sig) for sig in watched} == before
    finally:
        await server.stop()
    assert {sig: signal.getsignal(sig) for sig in watched} == before
