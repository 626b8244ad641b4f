"""The `pushbridge` command: serve, demo, emulator, check."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from rich.console import Console
from starlette.routing import BaseRoute, Mount

from bridge.config import Config, ConfigError, load_config, resolve_secrets
from bridge.obs.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pushbridge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and/or the workers")
    serve.add_argument("--config")
    serve.add_argument("--role", choices=["all", "api", "worker"], default="all")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    demo = sub.add_parser("demo", help="run the whole bridge on embedded defaults")
    demo.add_argument("--jobs", type=int, default=100)
    emu = sub.add_parser("emulator", help="run the upstream emulator alone")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8090)
    emu.add_argument("--protocol", choices=["octoai"], default="octoai")
    emu.add_argument("--duration-s", type=float, default=1.0)
    emu.add_argument("--duration-p95-s", type=float)
    emu.add_argument("--fail-rate", type=float, default=0.0)
    emu.add_argument("--seed", type=int)
    check = sub.add_parser("check", help="validate config, ping store, check upstreams")
    check.add_argument("--config")
    return p


def _config_path(arg: str | None) -> str | None:
    return arg or os.environ.get("PUSHBRIDGE_CONFIG") or None


def _load(path: str | None, args: argparse.Namespace) -> Config:
    from bridge.process import dev_config

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


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.process import DEV_KEY_ENV, DEV_SECRET_ENV, serve

    config = _load(_config_path(args.config), args)
    secrets = resolve_secrets(config)
    configure_logging("console" if config.dev_mode else config.log.format, config.log.level)
    if config.dev_mode:
        console = Console(stderr=True)
        console.print(
            "[bold]pushbridge dev mode[/bold]: embedded store in "
            f"{config.store.data_dir}, emulator upstreams {sorted(config.upstreams)}"
        )
        console.print(f"  API key:        {os.environ[DEV_KEY_ENV]}")
        console.print(f"  webhook secret: {os.environ[DEV_SECRET_ENV]}")
    # uvicorn re-raises the signal it caught once it has shut down; a graceful SIGTERM
    # shutdown is a success (exit 0), so the re-raised SIGTERM is ignored here.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    _run(serve(config, secrets, args.role, _dev_routes(config)))
    return 0


def _dev_routes(config: Config) -> list[BaseRoute]:
    """Dev mode serves the upstream emulator beside the API, at /emulator."""
    if not config.dev_mode:
        return []
    from bridge.dev.emulator import create_emulator_app

    return [Mount("/emulator", create_emulator_app())]


def _run(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.dev.demo import print_report, run_demo

    configure_logging("console", "warning")
    console = Console()
    report = _run(run_demo(args.jobs, console))
    print_report(report, console)  # type: ignore[arg-type]
    return 0 if report.ok else 1  # type: ignore[attr-defined]


def cmd_emulator(args: argparse.Namespace) -> int:
    import uvicorn

    from bridge.dev.emulator import EmulatorSettings, create_emulator_app

    settings = EmulatorSettings(
        duration_s=args.duration_s,
        duration_p95_s=args.duration_p95_s,
        fail_rate=args.fail_rate,
        seed=args.seed,
    )
    print(
        f"emulator: POST http://{args.host}:{args.port}/infer/<model> (health: /healthz)",
        file=sys.stderr,
    )
    uvicorn.run(
        create_emulator_app(settings),
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
    return _run(run_check(_config_path(args.config), Console()))  # type: ignore[return-value]


COMMANDS = {"serve": cmd_serve, "demo": cmd_demo, "emulator": cmd_emulator, "check": cmd_check}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"pushbridge: bad config: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
