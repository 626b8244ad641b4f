"""`pushbridge demo`: the whole bridge on embedded defaults, end to end, with a summary;
`--upstream PROTOCOL` runs it against that protocol's emulator (octoai by default).

The demo's bridge has its own loopback URL as `listen.public_url` (unless `--no-push`), so
the emulators of protocols whose provider calls back per job (replicate, runpod, fal)
push to it; Replicate's pushes are checked against the emulator's signing secret."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bridge.api.serving import start_server
from bridge.config import parse_config, resolve_secrets
from bridge.delivery.signing import new_webhook_secret
from bridge.dev.emulators import FOR_UPSTREAM
from bridge.dev.emulators.common import EmulatorSettings
from bridge.dev.receiver import Receiver
from bridge.process import bridge_app, open_runtime
from bridge.store.embedded import free_port

SUBMIT_CONCURRENCY = 32
UPSTREAM_TOKEN_ENV = "DEMO_UPSTREAM_TOKEN"
PUSH_SECRET_ENV = "DEMO_PUSH_SECRET"


@dataclass
class DemoReport:
    jobs: int
    accepted: int
    delivered: int
    verified: int
    lag_s: list[float]
    submit_s: list[float]
    polls_per_job: float
    elapsed_s: float
    upstream: str = "octoai"
    push: str = "off"  # "on": the emulator was given push URLs; else why not
    pushes_taken: int = 0  # pushes the bridge answered 2xx (verified where signed)
    pushes_refused: int = 0  # pushes the bridge refused (the emulator gave up on them)

    @property
    def ok(self) -> bool:
        return self.delivered == self.jobs and self.verified == self.jobs


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def demo_config(
    data_dir: str,
    port: int,
    upstream: dict[str, Any],
    environ: dict[str, str],
    public_url: str | None = None,
) -> Any:
    return parse_config(
        {
            "listen": {"host": "127.0.0.1", "port": port, "public_url": public_url},
            "store": {"data_dir": data_dir},
            "tenants": [
                {
                    "name": "demo",
                    "api_keys_env": "DEMO_API_KEY",
                    "webhook_secret_env": "DEMO_WEBHOOK_SECRET",
                }
            ],
            "callbacks": {"allow_http": True, "allow_private_networks": True},
            "upstreams": {"echo": upstream},
        },
        environ,
    )


async def _submit_all(
    client: httpx.AsyncClient,
    jobs: int,
    inputs: Callable[[int], Any],
    callback: str,
    progress: Progress,
    task: Any,
) -> tuple[int, list[float]]:
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    latencies: list[float] = []

    async def one(i: int) -> bool:
        async with gate:
            t0 = time.perf_counter()
            r = await client.post(
                "/v1/jobs",
                json={
                    "upstream": "echo",
                    "inputs": inputs(i),
                    "callback_url": callback,
                    "metadata": {"n": i},
                },
            )
            latencies.append(time.perf_counter() - t0)
            progress.advance(task)
            return r.status_code == 202

    results = await asyncio.gather(*(one(i) for i in range(jobs)))
    return sum(results), latencies


def _report(
    jobs: int,
    accepted: int,
    submit_s: list[float],
    receiver: Receiver,
    emulator: Any,
    elapsed_s: float,
) -> DemoReport:
    first: dict[str, Any] = {}
    for d in receiver.succeeded():
        first.setdefault(d.webhook_id, d)
    verified = sum(1 for d in first.values() if d.verified and d.event["type"] == "job.completed")
    lags = []
    for d in first.values():
        future = emulator.futures.get(d.event["data"]["upstream_id"])
        if future is not None:
            lags.append(d.arrived_at - future.ready_at)
    polls = emulator.requests["poll"] / max(1, jobs)
    return DemoReport(
        jobs,
        accepted,
        len(first),
        verified,
        lags,
        submit_s,
        polls,
        elapsed_s,
        pushes_taken=emulator.requests["webhook_sent"],
        pushes_refused=emulator.requests["webhook_failed"],
    )


def _push_state(enabled: bool, asked: bool, upstream: str) -> str:
    if enabled:
        return "on"
    return f"none: the {upstream} protocol does not push" if asked else "off (--no-push)"


def _with_push(
    module: Any, app: Any, echo: dict[str, Any], environ: dict[str, str]
) -> dict[str, Any]:
    """The demo's upstream, checking the pushes' signature where the emulator signs them."""
    secret_of = getattr(module, "dev_push_secret", None)
    if secret_of is None:
        return echo
    environ[PUSH_SECRET_ENV] = secret_of(app)
    return echo | {"push_secret_env": PUSH_SECRET_ENV}


async def run_demo(
    jobs: int,
    console: Console,
    timeout_s: float | None = None,
    upstream: str = "octoai",
    settings: EmulatorSettings | None = None,
    push: bool = True,
) -> DemoReport:
    """The demo against the emulator of the `upstream` protocol (with `settings`: durations
    1 s median, 3 s p95 by default); the emulator wants a token, which the upstream has.
    With `push`, the bridge's public URL is its own loopback URL: emulators that call back
    per job push to it."""
    emulator = FOR_UPSTREAM[upstream]
    data_dir = tempfile.mkdtemp(prefix="pushbridge-demo-")
    environ = {
        "DEMO_API_KEY": "pb_demo_" + os.urandom(8).hex(),
        "DEMO_WEBHOOK_SECRET": new_webhook_secret(),
        UPSTREAM_TOKEN_ENV: "demo-upstream-" + os.urandom(8).hex(),
    }
    settings = settings or EmulatorSettings(duration_s=1.0, duration_p95_s=3.0, seed=7)
    settings = dataclasses.replace(settings, token=environ[UPSTREAM_TOKEN_ENV])
    emulator_app = emulator.create_emulator_app(settings)
    receiver = Receiver([environ["DEMO_WEBHOOK_SECRET"]])
    emulator_srv = await start_server(emulator_app)
    receiver_srv = await start_server(receiver.app())
    port = free_port()
    echo = emulator.dev_upstream(emulator_srv.url, UPSTREAM_TOKEN_ENV)
    public_url = f"http://127.0.0.1:{port}" if push else None
    if push:
        echo = _with_push(emulator, emulator_app, echo, environ)
    config = demo_config(data_dir, port, echo, environ, public_url)
    timeout_s = timeout_s or 60 + jobs * 0.05
    try:
        async with open_runtime(config, resolve_secrets(config, environ)) as rt:
            pushing = _push_state(rt.push_enabled("echo"), push, upstream)
            bridge = await start_server(bridge_app(rt), port)
            console.print(
                f"store: embedded Valkey in {data_dir}; bridge {bridge.url}; "
                f"{upstream} emulator {emulator_srv.url}; receiver {receiver_srv.url}"
            )
            started = time.perf_counter()
            headers = {"Authorization": f"Bearer {environ['DEMO_API_KEY']}"}
            async with httpx.AsyncClient(
                base_url=bridge.url, headers=headers, timeout=30
            ) as client:
                accepted, submit_s = await _track(
                    client, jobs, emulator.dev_inputs, receiver_srv.url, receiver, timeout_s
                )
            elapsed = time.perf_counter() - started
            await bridge.stop()
    finally:
        await receiver_srv.stop()
        await emulator_srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    state = emulator_app.state.emulator
    report = _report(jobs, accepted, submit_s, receiver, state, elapsed)
    return dataclasses.replace(report, upstream=upstream, push=pushing)


async def _track(
    client: httpx.AsyncClient,
    jobs: int,
    inputs: Callable[[int], Any],
    receiver_url: str,
    receiver: Receiver,
    timeout_s: float,
) -> tuple[int, list[float]]:
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        sub = progress.add_task("submitted", total=jobs)
        dlv = progress.add_task("delivered", total=jobs)
        submitting = asyncio.create_task(
            _submit_all(client, jobs, inputs, f"{receiver_url}/hooks/demo", progress, sub)
        )

        def delivered() -> int:
            return len({d.webhook_id for d in receiver.succeeded()})

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (delivered() < jobs or not submitting.done()):
            progress.update(dlv, completed=delivered())
            await asyncio.sleep(0.1)
        progress.update(dlv, completed=delivered())
        return await submitting


def _pushes(r: DemoReport) -> str:
    if r.push != "on":
        return r.push
    refused = f", {r.pushes_refused} refused" if r.pushes_refused else ""
    return f"{r.pushes_taken} taken{refused} (each made its job due at once)"


def print_report(r: DemoReport, console: Console) -> None:
    table = Table(title=f"pushbridge demo ({r.upstream})", show_header=False)
    table.add_row("accepted (202)", f"{r.accepted}/{r.jobs}")
    table.add_row("delivered", f"{r.delivered}/{r.jobs}")
    table.add_row("signatures verified", f"{r.verified}/{r.jobs} (standardwebhooks)")
    table.add_row(
        "delivery lag p50 / p99",
        f"{percentile(r.lag_s, 50) * 1000:.0f} ms / {percentile(r.lag_s, 99) * 1000:.0f} ms",
    )
    table.add_row(
        "submit latency p50 / p99",
        f"{percentile(r.submit_s, 50) * 1000:.1f} ms / {percentile(r.submit_s, 99) * 1000:.1f} ms",
    )
    table.add_row("upstream polls per job", f"{r.polls_per_job:.2f}")
    table.add_row("provider pushes", _pushes(r))
    table.add_row("wall time", f"{r.elapsed_s:.1f} s")
    console.print(table)
    console.print(
        "[green]OK[/green]" if r.ok else "[red]FAILED: not every callback arrived verified[/red]"
    )
