"""pushbridge: polling becomes push. Commands: serve, demo, emulator, check, secret."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from starlette.routing import BaseRoute, Mount

from bridge.config import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    Config,
    ConfigError,
    load_config,
    resolve_secrets,
)
from bridge.obs.logs import configure_logging
from bridge.store.embedded_share import EmbeddedShare

if TYPE_CHECKING:  # imported when run: `pushbridge --help` stays quick
    from bridge.engine.service import Role

T = TypeVar("T")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


CONFIG_HELP = "config file (default: $PUSHBRIDGE_CONFIG; neither: dev mode)"


def _version() -> str:
    try:
        return importlib.metadata.version("pushbridge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the HTTP API and/or the workers",
        description="Run the bridge. Without a config: dev mode (embedded store in "
        "./.pushbridge, emulator upstreams, loopback callbacks; a second dev process, e.g. "
        "--role worker --port 8081, joins the first one's store and emulator).",
        formatter_class=HelpFormatter,
    )
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.add_argument(
        "--role",
        choices=["all", "api", "worker"],
        default="all",
        help="api: HTTP API only; worker: polls and deliveries only (HTTP: health, metrics)",
    )
    serve.add_argument("--host", help="listen address (default: listen.host; dev: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: listen.port; dev: 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="processes sharing the port and the store (env PUSHBRIDGE_WORKERS; "
        "default: the CPUs available to this process)",
    )


def _add_emulator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emu = sub.add_parser(
        "emulator",
        help="run the upstream emulator alone",
        description="An upstream emulator speaking one provider's protocol (README: The emulator).",
        formatter_class=HelpFormatter,
    )
    emu.add_argument("--host", default="127.0.0.1", help="listen address")
    emu.add_argument("--port", type=int, default=8090, help="listen port")
    emu.add_argument(
        "--protocol", choices=_emulator_protocols(), default="octoai", help="upstream protocol"
    )
    emu.add_argument("--duration-s", type=float, default=1.0, help="median job duration")
    emu.add_argument(
        "--duration-p95-s",
        type=float,
        help="95th percentile duration: log-normal durations (default: every job takes "
        "--duration-s)",
    )
    rates = {
        "--fail-rate": "share of jobs that end failed",
        "--expire-rate": "share of jobs whose future answers 404 once done",
        "--submit-503-rate": "share of submits answered 503 + Retry-After",
        "--poll-503-rate": "share of polls answered 503 + Retry-After",
        "--poll-429-rate": "share of polls answered 429 + Retry-After",
    }
    for flag, text in rates.items():
        emu.add_argument(flag, type=float, default=0.0, help=text)
    emu.add_argument("--retry-after-s", type=int, default=1, help="Retry-After of 503/429")
    emu.add_argument(
        "--future-ttl-s", type=float, default=3600.0, help="how long a done future is kept"
    )
    emu.add_argument(
        "--token-env",
        help="environment variable holding the Bearer token every request must carry "
        "(default: no token needed)",
    )
    emu.add_argument("--seed", type=int, help="random seed, for repeatable runs")


def _add_secret(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secret = sub.add_parser(
        "secret",
        help="make a webhook secret or hash an API key",
        description="Secrets for the config: `secret webhook` prints a new Standard Webhooks "
        "secret for a tenant's webhook_secret_env; `secret hash-key < key.txt` prints the "
        "sha256 of the API key read from stdin, for tenants[].api_key_hashes.",
        formatter_class=HelpFormatter,
    )
    kinds = secret.add_subparsers(dest="kind", required=True)
    kinds.add_parser("webhook", help="print a new whsec_ secret", formatter_class=HelpFormatter)
    kinds.add_parser(
        "hash-key",
        help="read an API key from stdin, print its sha256 (for api_key_hashes)",
        formatter_class=HelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pushbridge", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    demo = sub.add_parser(
        "demo",
        help="run the whole bridge on embedded defaults",
        description="Embedded store, emulator, receiver and bridge on 127.0.0.1; exit 0 only "
        "if every callback arrived and verified.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--jobs", type=int, default=100, help="jobs to submit")
    demo.add_argument(
        "--upstream",
        choices=PROTOCOLS,
        default=DEFAULT_PROTOCOL,
        help="the upstream protocol, against its emulator (custom: Runway's, by its adapter)",
    )
    demo.add_argument(
        "--push",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the bridge's public URL is its loopback URL, so emulators that call back "
        "per job (replicate, runpod, fal) push to it",
    )
    _add_emulator(sub)
    check = sub.add_parser(
        "check",
        help="validate config, ping store, check upstreams",
        description="Check the config, the secrets, the store (reachable, noeviction, "
        "persistence) and each upstream (health, token); print every problem; exit 1 if any.",
        formatter_class=HelpFormatter,
    )
    check.add_argument("--config", help=CONFIG_HELP)
    _add_secret(sub)
    return p


def _emulator_protocols() -> list[str]:
    from bridge.dev.emulators import PROTOCOLS

    return sorted(PROTOCOLS)


def _default_workers() -> int:
    from bridge.supervisor import available_cpus

    value = os.environ.get("PUSHBRIDGE_WORKERS", "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cpus()


def _config_path(arg: str | None) -> str | None:
    return arg or os.environ.get("PUSHBRIDGE_CONFIG") or None


def _load(path: str | None, args: argparse.Namespace) -> Config:
    from bridge.dev.devmode import dev_config

    if path is None:
        return dev_config(
            os.environ,
            port=getattr(args, "port", None) or 8080,
            host=getattr(args, "host", None) or "127.0.0.1",
        )
    config = load_config(path)
    listen = config.listen.model_copy(
        update={k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    )
    return config.model_copy(update={"listen": listen})


class UsageError(Exception):
    """The command cannot run as asked (exit 2); the message says what to do instead."""


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _serve(config: Config, role: Role, workers: int = 1) -> int:
    from bridge.process import serve
    from bridge.supervisor import Supervisor, listening_socket

    secrets = resolve_secrets(config)
    configure_logging("console" if config.dev_mode else config.log.format, config.log.level)
    routes = _dev_routes(config)

    def run(sock: socket.socket | None) -> None:
        # uvicorn re-raises the signal it caught once it has shut down; a graceful SIGTERM
        # shutdown is a success (exit 0), so the re-raised SIGTERM is ignored here.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        _run(serve(config, secrets, role, routes, sock))

    if workers <= 1:
        run(None)
        return 0
    sock = listening_socket(config.listen.host, config.listen.port)
    return Supervisor(workers, run).run(sock)


def _dev_banner(config: Config, share: EmbeddedShare | None, role: str) -> None:
    from bridge.dev.devmode import DEV_KEY_ENV, DEV_SECRET_ENV

    console = Console(stderr=True, soft_wrap=True)
    if share is None:
        where = "the store of PUSHBRIDGE_STORE__URL"
    elif share.owner:
        where = f"embedded store in {config.store.data_dir}"
    else:
        assert share.store is not None
        where = (
            f"joined the embedded store and emulator of process {share.store.owner_pid} "
            f"in {config.store.data_dir} (stop that one last)"
        )
    console.print(
        f"[bold]pushbridge dev mode[/bold] (role {role}, port {config.listen.port}): {where}, "
        f"emulator upstreams {sorted(config.upstreams)}, callbacks to loopback only"
    )
    console.print(f"  API key:        {os.environ[DEV_KEY_ENV]}")
    console.print(f"  webhook secret: {os.environ[DEV_SECRET_ENV]}")


def _serve_dev(args: argparse.Namespace) -> int:
    from bridge.dev.devmode import dev_store

    config = _load(None, args)
    if _port_in_use(config.listen.host, config.listen.port):
        raise UsageError(
            f"port {config.listen.port} on {config.listen.host} is in use (another pushbridge?);"
            " give this one its own --port, e.g. serve --role worker --port 8081"
        )
    if config.store.url:  # PUSHBRIDGE_STORE__URL: no embedded store
        _dev_banner(config, None, args.role)
        return _serve(config, args.role, args.workers)
    with dev_store(config, os.environ) as (joined, share):
        _dev_banner(joined, share, args.role)
        return _serve(joined, args.role, args.workers)


def cmd_serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    if path is None:
        return _serve_dev(args)
    return _serve(_load(path, args), args.role, args.workers)


def _dev_routes(config: Config) -> list[BaseRoute]:
    """Dev mode serves the upstream emulator beside the API, at /emulator."""
    if not config.dev_mode:
        return []
    from bridge.dev.emulators.octoai import create_emulator_app

    return [Mount("/emulator", create_emulator_app())]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.dev.demo import print_report, run_demo

    configure_logging("console", "warning")
    console = Console()
    report = _run(run_demo(args.jobs, console, upstream=args.upstream, push=args.push))
    print_report(report, console)
    return 0 if report.ok else 1


def cmd_emulator(args: argparse.Namespace) -> int:
    import uvicorn

    from bridge.dev.emulators import ENTRY_POINTS, PROTOCOLS, EmulatorSettings

    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise UsageError(f"--token-env: environment variable {args.token_env} is not set")
    settings = EmulatorSettings(
        duration_s=args.duration_s,
        duration_p95_s=args.duration_p95_s,
        fail_rate=args.fail_rate,
        expire_rate=args.expire_rate,
        submit_503_rate=args.submit_503_rate,
        poll_503_rate=args.poll_503_rate,
        poll_429_rate=args.poll_429_rate,
        retry_after_s=args.retry_after_s,
        future_ttl_s=args.future_ttl_s,
        token=token,
        seed=args.seed,
    )
    print(
        f"emulator ({args.protocol}): "
        + ENTRY_POINTS.get(args.protocol, "{base}").format(base=f"http://{args.host}:{args.port}")
        + " (health: /healthz)",
        file=sys.stderr,
    )
    uvicorn.run(
        PROTOCOLS[args.protocol](settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http="httptools",
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from bridge.cli.check import run_check

    configure_logging("console", "error")
    return _run(run_check(_config_path(args.config), Console()))


def cmd_secret(args: argparse.Namespace) -> int:
    from bridge.config import api_key_sha256
    from bridge.delivery.signing import new_webhook_secret

    if args.kind == "webhook":
        print(new_webhook_secret())
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        print("pushbridge secret hash-key: give the API key on stdin", file=sys.stderr)
        return 2
    print(api_key_sha256(key))
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "demo": cmd_demo,
    "emulator": cmd_emulator,
    "check": cmd_check,
    "secret": cmd_secret,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"pushbridge: bad config: {e}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"pushbridge: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
