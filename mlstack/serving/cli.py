"""`mlstack serve`: the registry-following scoring server (or MLflow's own, `--engine mlflow`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a registered model over MLflow's scoring protocol, following the registry",
        description=(
            "Serve models:/<name>@<alias> (default from MLSTACK_SERVE_MODEL/MLSTACK_SERVE_ALIAS) "
            "over MLflow's scoring protocol. Starts before any model exists (/health 200, /ping "
            "503 until loaded), polls the registry and hot-swaps new versions; other models "
            "holding the alias answer at /models/<name>/invocations. MLFLOW_TRACKING_URI is the "
            "registry."
        ),
    )
    parser.add_argument("--model-uri", help="any model URI (default models:/<model>@<alias>)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port (default 5001)")
    parser.add_argument("--workers", type=_positive_int, help="worker processes (default 1)")
    parser.add_argument(
        "--poll-interval", type=_positive_float, metavar="SECONDS", help="registry poll interval"
    )
    parser.add_argument(
        "--engine",
        choices=("mlstack", "mlflow"),
        help="mlstack (default) or mlflow: exec `mlflow models serve` on the resolved URI",
    )
    parser.set_defaults(func=run_serve)
    from mlstack.serving.promote import register as register_promote

    register_promote(subparsers)


def run_serve(args: argparse.Namespace) -> int:
    from mlstack.settings import Settings

    overrides: dict[str, Any] = {}
    if args.model_uri:
        overrides["serve_model_uri"] = args.model_uri
    if args.host:
        overrides["serve_host"] = args.host
    if args.port is not None:
        overrides["serve_port"] = args.port
    if args.workers is not None:
        overrides["serve_workers"] = args.workers
    if args.poll_interval is not None:
        overrides["poll_interval_seconds"] = args.poll_interval
    if args.engine:
        overrides["serving_engine"] = args.engine
    settings = Settings().model_copy(update=overrides)

    if settings.serve_tokens_file is not None:
        from mlstack.serving.auth import TokenFileError, read_tokens

        try:
            count = len(read_tokens(settings.serve_tokens_file))
        except TokenFileError as exc:
            print(f"mlstack serve: {exc}", file=sys.stderr)
            return 2
        if settings.serving_engine == "mlflow":
            print(
                "mlstack serve: MLSTACK_SERVE_TOKENS_FILE needs the mlstack engine "
                "(`mlflow models serve` has no authentication)",
                file=sys.stderr,
            )
            return 2
        print(f"mlstack serve: bearer-token authentication on ({count} token(s))", file=sys.stderr)
        if settings.serve_metrics_tokens_file is not None:
            try:
                read_tokens(settings.serve_metrics_tokens_file)
            except TokenFileError as exc:
                print(f"mlstack serve: MLSTACK_SERVE_METRICS_TOKENS_FILE: {exc}", file=sys.stderr)
                return 2
            print("mlstack serve: scrape-only token(s) accepted on /metrics", file=sys.stderr)
    if settings.serving_engine == "mlflow":
        from mlstack.serving.mlflow_engine import exec_mlflow_serve

        return exec_mlflow_serve(settings)
    from mlstack.serving.server import run_server

    return run_server(settings)
