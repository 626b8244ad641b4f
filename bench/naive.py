"""The naive alternative: one asyncio task per job polls the upstream every second and
POSTs the callback itself (no store, nothing survives a crash). As in OctoAI's guide.

    python -m bench.naive --emulator URL --receiver URL --workload realistic --out FILE [--scale F]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from bench.workloads import WORKLOADS

POLL_S = 1.0


async def one_job(
    client: httpx.AsyncClient,
    emulator: str,
    receiver: str,
    i: int,
    started: float,
    at_s: float,
    submit_s: list[float],
) -> None:
    await asyncio.sleep(max(0.0, started + at_s - time.perf_counter()))
    t0 = time.perf_counter()
    r = await client.post(f"{emulator}/infer/echo", json={"i": i}, headers={"X-OctoAI-Async": "1"})
    submit_s.append(time.perf_counter() - t0)
    future = r.json()
    while True:
        await asyncio.sleep(POLL_S)
        status = (await client.get(future["poll_url"])).json()
        if status["status"] == "completed":
            break
    result = (await client.get(status["response_url"])).json()
    body = {
        "type": "job.completed",
        "data": {"id": f"naive-{i}", "upstream_id": future["response_id"], "result": result},
    }
    await client.post(
        f"{receiver}/naive",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", "webhook-id": f"naive-{i}"},
    )


async def run(emulator: str, receiver: str, workload: str, scale: float) -> list[float]:
    w = WORKLOADS[workload].scaled(scale)
    submit_s: list[float] = []
    # the bridge's HTTP stack (httpx over aiohttp's pool), so the two differ in pattern
    # only: httpx's default pool is ~5x the CPU per request with thousands in flight
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                one_job(client, emulator, receiver, i, started, at, submit_s)
                for i, at in enumerate(w.arrivals_s())
            )
        )
    return submit_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--emulator", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", required=True, help="where to write the submit latencies (JSON)")
    a = p.parse_args()
    import uvloop

    submit_s = uvloop.run(run(a.emulator, a.receiver, a.workload, a.scale))
    Path(a.out).write_bytes(orjson.dumps({"submit_s": submit_s}))


if __name__ == "__main__":
    main()
