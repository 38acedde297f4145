"""`mlstack promote NAME`: move the champion alias to the challenger's version, guard permitting.

1. Reads `NAME@<from>` (default `challenger`) and `NAME@<to>` (default `champion`) from the registry.
2. Unless `--force`, asks the serving process (`MLSTACK_SERVING_URL`, default
   http://127.0.0.1:5001; its bearer token from `MLSTACK_SERVE_TOKENS_FILE` when set) for the
   guard's record: `mlstack_serving_guard_tripped{model=NAME,version=V}` in `/metrics`, the max
   over every worker. Tripped, or no answer from serving: it refuses (exit 1) and says why.
3. Sets `<to>` on the challenger's version, then removes `<from>` (unless `--keep-from`), and
   prints which versions moved. Serving then swaps the already loaded challenger in as the
   champion on its next poll, without a download or a gap.

Exit codes: 0 promoted (or nothing to do), 1 refused or failed, 2 usage, 3 registry unreachable.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import requests

_GAUGE = re.compile(r"^mlstack_serving_guard_tripped\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="move a model's champion alias to its challenger's version (guard permitting)",
        description=(
            "Move NAME@TO (default champion) to the version NAME@FROM (default challenger) holds, "
            "then remove FROM. Refuses when serving's guard has tripped for that version, or "
            "when serving cannot be asked, unless --force. MLFLOW_TRACKING_URI is the registry; "
            "MLSTACK_SERVING_URL the serving process."
        ),
    )
    parser.add_argument("name", help="registered model name")
    parser.add_argument("--from", dest="source", default="challenger", help="alias to promote")
    parser.add_argument("--to", dest="target", default="champion", help="alias to move")
    parser.add_argument("--force", action="store_true", help="promote despite the guard")
    parser.add_argument("--keep-from", action="store_true", help="keep the FROM alias")
    parser.add_argument("--serving-url", help="serving to ask for the guard's state")
    parser.set_defaults(func=run_promote)


def guard_record(metrics_text: str, name: str, version: str) -> bool | None:
    """True/False: the guard's state of NAME's version; None: no record of that version."""
    for line in metrics_text.splitlines():
        match = _GAUGE.match(line.strip())
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("model") == name and labels.get("version") == version:
            return float(match["value"]) >= 1.0
    return None


def _serving_get(url: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url, headers=headers, timeout=10)


def _first_token(settings: Any) -> str | None:
    if settings.serve_tokens_file is None:
        return None
    from mlstack.serving.auth import read_tokens

    return read_tokens(settings.serve_tokens_file)[0]


def _guard_reason(base: str, token: str | None, name: str) -> str:
    try:
        body = _serving_get(f"{base}/rollouts", token).json()
        challenger = body["models"][name]["challenger"] or {}
        return str((challenger.get("guard") or {}).get("reason") or "no reason recorded")
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return "reason not available from this worker"


def run_promote(args: argparse.Namespace) -> int:
    from mlstack.settings import Settings

    settings = Settings()
    base = (args.serving_url or settings.serving_url).rstrip("/")
    name, source, target = args.name, args.source, args.target
    if source == target:
        print("mlstack promote: --from and --to name the same alias", file=sys.stderr)
        return 2

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    def by_alias(alias: str) -> str | None:
        try:
            return str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code in (
                "RESOURCE_DOES_NOT_EXIST",
                "NOT_FOUND",
                "INVALID_PARAMETER_VALUE",
            ):
                return None
            raise

    try:
        new = by_alias(source)
        old = by_alias(target)
    except Exception as exc:
        print(
            f"mlstack promote: cannot read {name} from the registry at {settings.tracking_uri}: {exc}",
            file=sys.stderr,
        )
        return 3
    if new is None:
        print(
            f"mlstack promote: {name} has no @{source} alias: nothing to promote", file=sys.stderr
        )
        return 1
    if old == new:
        print(f"{name}: @{target} already holds version {new}")
    else:
        if not args.force:
            try:
                token = _first_token(settings)
                answer = _serving_get(f"{base}/metrics", token)
                answer.raise_for_status()
            except Exception as exc:
                print(
                    f"mlstack promote: cannot read the guard's state from {base}/metrics ({exc}); "
                    "refusing. Point --serving-url (or MLSTACK_SERVING_URL) at serving, or pass "
                    "--force to promote without it.",
                    file=sys.stderr,
                )
                return 1
            state = guard_record(answer.text, name, new)
            if state:
                reason = _guard_reason(base, token, name)
                print(
                    f"mlstack promote: refusing: serving's guard tripped for {name} version {new} "
                    f"(@{source}): {reason}. Pass --force to promote anyway.",
                    file=sys.stderr,
                )
                return 1
            if state is None:
                print(
                    f"note: serving at {base} has no guard record of {name} version {new} "
                    "(it has not followed that challenger)"
                )
        client.set_registered_model_alias(name, target, new)
        print(f"{name}: @{target} {old or '(none)'} -> {new}")
    if not args.keep_from:
        client.delete_registered_model_alias(name, source)
        print(f"{name}: @{source} removed (was {new})")
    return 0
