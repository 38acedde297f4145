"""`mlstack local up|down|status|logs`: the no-Docker platform on 127.0.0.1.

Exit codes: 0 success (for `status`: every service healthy), 1 failure (the message says which
service and shows its log), 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlstack.local.platform import LocalPlatform
    from mlstack.local.state import StateDir

SERVICES = ("postgres", "s3", "mlflow", "serving")


def register(subparsers: Any) -> None:
    """Add `local` with its sub-commands to the top-level `mlstack` parser."""
    local = subparsers.add_parser(
        "local",
        help="run the platform locally without Docker (PostgreSQL, S3, MLflow, serving)",
        description="The whole platform as background processes on 127.0.0.1, "
        "with data, logs and pid files in one state dir.",
    )
    commands = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start every service (already running ones are kept)")
    add_state_dir(up)
    up.add_argument("--mlflow-port", type=port_number, help="MLflow UI/API (default 5000)")
    up.add_argument("--serving-port", type=port_number, help="mlstack serve (default 5001)")
    up.add_argument("--s3-port", type=port_number, help="S3 endpoint (default 8333)")
    up.add_argument(
        "--artifacts", choices=("s3", "file"), help="where MLflow keeps artifacts (default s3)"
    )
    up.add_argument(
        "--artifacts-dir", type=Path, help="folder for --artifacts file (default ./mlartifacts)"
    )
    up.add_argument("--workers", type=positive_int, help="MLflow server workers (default 2)")
    up.add_argument(
        "--serving-workers",
        type=positive_int,
        help="mlstack serve worker processes (default: MLSTACK_SERVE_WORKERS, else 1)",
    )
    up.set_defaults(func=cmd_up)

    down = commands.add_parser("down", help="stop what `up` started (data are kept)")
    add_state_dir(down)
    down.set_defaults(func=cmd_down)

    status = commands.add_parser("status", help="one line per service; exit 0 when all healthy")
    add_state_dir(status)
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser("logs", help="the tail of one service's log, or of all")
    logs.add_argument("service", nargs="?", choices=SERVICES)
    add_state_dir(logs)
    logs.add_argument("-n", "--lines", type=positive_int, default=50, help="lines (default 50)")
    logs.set_defaults(func=cmd_logs)


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, help="data, logs, pid files, env (default: .mlstack)"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return value


def say(line: str) -> None:
    print(line, flush=True)


def state_dir_of(args: argparse.Namespace) -> StateDir:
    from mlstack.local.state import StateDir
    from mlstack.settings import get_settings

    return StateDir((args.state_dir or get_settings().state_dir).resolve())


def load_platform(args: argparse.Namespace) -> LocalPlatform:
    from mlstack.local.platform import LocalPlatform
    from mlstack.settings import get_settings

    return LocalPlatform.load(state_dir_of(args), get_settings())


Command = Callable[[argparse.Namespace], int]


def report_errors(command: Command) -> Command:
    """Turn a PlatformError into its message on stderr and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from mlstack.local.processes import PlatformError

        try:
            return command(args)
        except PlatformError as error:
            print(f"mlstack local {args.local_command}: {error}", file=sys.stderr, flush=True)
            return 1

    return run


@report_errors
def cmd_up(args: argparse.Namespace) -> int:
    from mlstack.local.platform import LocalPlatform, UpOptions, resolve_config

    options = UpOptions(
        artifacts=args.artifacts,
        artifacts_dir=args.artifacts_dir,
        workers=args.workers,
        mlflow_port=args.mlflow_port,
        serving_port=args.serving_port,
        s3_port=args.s3_port,
        serving_workers=args.serving_workers,
    )
    with state_dir_of(args).locked():
        current = load_platform(args)
        config = resolve_config(current.config, options)
        current.refuse_reconfiguring_while_running(config)
        LocalPlatform(current.state, config, current.settings).up(say)
    return 0


@report_errors
def cmd_down(args: argparse.Namespace) -> int:
    if not state_dir_of(args).root.exists():
        say(f"nothing running in {state_dir_of(args).root}")
        return 0
    with state_dir_of(args).locked():
        load_platform(args).down(say)
    return 0


@report_errors
def cmd_status(args: argparse.Namespace) -> int:
    platform = load_platform(args)
    if not platform.state.config_file.exists():
        say(f"no platform in {platform.state.root} (run `mlstack local up`)")
        return 1
    return 0 if platform.status(say) else 1


@report_errors
def cmd_logs(args: argparse.Namespace) -> int:
    load_platform(args).logs(say, args.service, args.lines)
    return 0
