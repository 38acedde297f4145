"""A platform = its database + its object store, native (`mlstack local`) or Compose.

`native_target(state_dir)` reads endpoints and keys from the local platform's `STATE_DIR/env`;
`compose_target(folder)` reads the Compose project's configuration and needs its `postgres` and
`mlflow` services running. Every operation (backup, gc, import, upgrade) starts from a `Target`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlstack.local.state import read_env_file
from mlstack.platform.common import PlatformError, mlflow_version, run_tool
from mlstack.platform.compose import Compose, compose_artifacts_destination
from mlstack.platform.database import ComposeDatabase, Database, NativeDatabase, table_counts
from mlstack.platform.objects import ComposeObjectStore, FolderStore, ObjectStore, S3Store

# Tables whose rows mean "this platform already holds something".
OCCUPIED_WHEN_ANY_ROW = ("runs", "registered_models", "logged_models")


@dataclass
class Target:
    kind: str  # "native" or "compose"
    description: str
    database: Database
    objects: ObjectStore
    mlflow_version: Callable[[], str] = field(default=mlflow_version)
    # The tracking server's address as this host reaches it (import writes through it).
    tracking_uri: Callable[[], str] = field(default=lambda: "")

    def occupied_by(self) -> list[str]:
        """What makes this platform non-empty (nothing: a fresh platform)."""
        counts = table_counts(self.database)
        found = [f"{counts[t]} {t}" for t in OCCUPIED_WHEN_ANY_ROW if counts.get(t)]
        objects = self.objects.count()
        if objects:
            found.append(f"{objects} objects in {self.objects.description}")
        return found


def native_target(state_dir: Path) -> Target:
    """The `mlstack local` platform whose `env` file is in `state_dir`."""
    env_file = state_dir / "env"
    if not env_file.exists():
        raise PlatformError(
            f"no local platform in {state_dir} ({env_file} is missing): "
            f"run `mlstack local up --state-dir {state_dir}` first"
        )
    env = read_env_file(env_file)
    objects: ObjectStore
    if "MLSTACK_S3_ENDPOINT" in env:
        objects = S3Store.connect(
            env["MLSTACK_S3_ENDPOINT"],
            env["MLSTACK_BUCKET"],
            env.get("MLSTACK_ARTIFACTS_PREFIX", ""),
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
        )
    elif "MLSTACK_ARTIFACTS_DIR" in env:
        objects = FolderStore(Path(env["MLSTACK_ARTIFACTS_DIR"]))
    else:
        raise PlatformError(f"{env_file} names neither an S3 endpoint nor an artifacts folder")
    return Target(
        kind="native",
        description=f"native {state_dir}",
        database=NativeDatabase(env["MLSTACK_PG_URI"]),
        objects=objects,
        tracking_uri=lambda: env["MLFLOW_TRACKING_URI"],
    )


def compose_target(project_dir: Path, compose: Compose | None = None) -> Target:
    """The Compose project of `project_dir` (or `compose`, another project of its files)."""
    compose = compose or Compose(project_dir)
    config = compose.project_config()
    running = compose.running_services()
    missing = {"postgres", "mlflow"} - running
    if missing:
        raise PlatformError(
            f"compose project {config.get('name', '?')}: {', '.join(sorted(missing))} not "
            "running (scripts/start.sh, or `docker compose up -d --wait`)"
        )
    bucket, prefix = compose_artifacts_destination(config)

    def container_mlflow_version() -> str:
        output = run_tool(
            compose.exec_command("mlflow", "mlstack", "backup", "versions"), "versions"
        )
        return str(json.loads(output)["mlflow"])

    return Target(
        kind="compose",
        description=f"compose {config.get('name', project_dir)}",
        database=ComposeDatabase(compose),
        objects=ComposeObjectStore(compose, bucket, prefix),
        mlflow_version=container_mlflow_version,
        tracking_uri=lambda: published_tracking_uri(compose),
    )


def published_tracking_uri(compose: Compose) -> str:
    """`http://HOST:PORT` of the mlflow service's published port (MLFLOW_BIND)."""
    output = run_tool(compose.command("port", "mlflow", "5000"), "docker compose port mlflow")
    address = output.decode().strip().splitlines()[0] if output.strip() else ""
    if not address:
        raise PlatformError("the mlflow service publishes no port (MLFLOW_BIND) to reach it")
    host, _, port = address.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    return f"http://{host}:{port}"


def add_target_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--compose",
        action="store_true",
        help="the Docker Compose stack of the current folder (COMPOSE_FILE etc. are honoured)",
    )
    where.add_argument(
        "--state-dir", type=Path, help="the native platform's state dir (default: .mlstack)"
    )


def target_of(args: argparse.Namespace) -> Target:
    if args.compose:
        return compose_target(Path.cwd())
    from mlstack.settings import get_settings

    return native_target((args.state_dir or get_settings().state_dir).resolve())
