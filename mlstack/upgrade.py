"""`mlstack upgrade` (behind scripts/upgrade.sh): move the platform's database to the MLflow this
checkout pins, after rehearsing on a copy.

1. back up the platform (`mlstack backup create`: the archive is also the way back);
2. restore that archive into a scratch platform whose database is empty, exactly as the old
   MLflow left it (no schema of the new MLflow in the way);
3. start the scratch platform's tracking server with the pinned MLflow, which runs `mlflow db
   upgrade` first, and check it: it answers, and every experiment, run and registered version of
   the archive is there through the MLflow client, each alias resolving;
4. only then migrate the real platform the same way, and run the same check on it.

A failure in 1-3 leaves the real platform as it was and says why (the scratch platform is removed
either way; `--keep-scratch` keeps it to look into). Rolling back after 4: restore the backup into a
platform running the old version (docs/upgrades.md).

Native: the local venv is the "new version" once `scripts/bootstrap.sh` ran. Compose (`--compose`):
the checkout's compose files and Dockerfiles are the new version once it is checked out; the
running containers are the old one. The scratch platform is a second compose project of the same
files (`<project>-upgrade-rehearsal`, its own volumes, free loopback ports), built and started
with `up -d --build --wait`; its database is dropped and created empty and the backup restored
into it; restarting its `mlflow` service runs `mlflow db upgrade` (docker/mlflow-server.sh). Step
4 stops the real project's `mlflow` and `serving` and runs `up -d --build --wait`: the new images,
and the migration in the `mlflow` entrypoint.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlstack.backup import create_backup, restore_backup
from mlstack.platform.common import PlatformError, Say, reporting_errors, run_tool, say
from mlstack.platform.compose import Compose
from mlstack.platform.target import (
    add_target_options,
    compose_target,
    native_target,
    published_tracking_uri,
)

HEALTH_TIMEOUT_SECONDS = 300
LOCAL_TIMEOUT_SECONDS = 900
UP_WAIT_SECONDS = 900
# The host addresses the compose files publish (docker-compose*.yml): the scratch project gets
# free loopback ports for each, so it runs beside the real one.
BIND_VARIABLES = ("MLFLOW_BIND", "SERVING_BIND", "MINIO_CONSOLE_BIND", "GRAFANA_BIND",
                  "PROMETHEUS_BIND")  # fmt: skip


def local(*args: str) -> str:
    """`python -m mlstack local ARGS`; its output, or PlatformError with it."""
    command = [sys.executable, "-m", "mlstack", "local", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            timeout=LOCAL_TIMEOUT_SECONDS)  # fmt: skip
    if result.returncode != 0:
        raise PlatformError(
            f"`mlstack local {' '.join(args)}` exited {result.returncode}:\n"
            f"{(result.stdout + result.stderr).strip()[-4000:]}"
        )
    return result.stdout


def stop_tracking_and_serving(state_dir: Path) -> None:
    from mlstack.local.platform import LocalPlatform
    from mlstack.local.state import StateDir
    from mlstack.settings import get_settings

    platform = LocalPlatform.load(StateDir(state_dir), get_settings())
    for name in ("serving", "mlflow"):
        platform.service(name).stop()


def empty_database(state_dir: Path) -> None:
    """DROP and CREATE the scratch platform's `mlflow` database (what the new MLflow made)."""
    import psycopg2

    from mlstack.local.state import read_env_file

    uri = read_env_file(state_dir / "env")["MLSTACK_PG_URI"]
    connection = psycopg2.connect(uri.rsplit("/", 1)[0] + "/postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("DROP DATABASE mlflow WITH (FORCE)")
            cursor.execute("CREATE DATABASE mlflow")
    finally:
        connection.close()


def native_uri(state_dir: Path) -> str:
    from mlstack.local.state import read_env_file

    return read_env_file(state_dir / "env")["MLFLOW_TRACKING_URI"]


def smoke_check(uri: str, expected_runs: int, say: Say) -> None:
    """The pinned client sees the archive's runs and versions; every alias resolves."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    while True:
        try:
            experiments = client.search_experiments(view_type=ViewType.ALL, max_results=50000)
            break
        except Exception as error:
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"the tracking server at {uri} does not answer: {error}"
                ) from None
            time.sleep(2)
    runs = 0
    for experiment in experiments:
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL,
                                      max_results=1000, page_token=token)  # fmt: skip
            runs += len(page)
            token = page.token
            if not token:
                break
    if runs != expected_runs:
        raise PlatformError(
            f"{runs} runs through the MLflow client, the backup holds {expected_runs}"
        )
    versions = aliases = 0
    for model in client.search_registered_models(max_results=1000):
        versions += len(client.search_model_versions(f"name = '{model.name}'"))
        for alias in model.aliases or {}:
            client.get_model_version_by_alias(model.name, alias)
            aliases += 1
    say(f"upgrade: check OK: {len(experiments)} experiments, {runs} runs, {versions} versions, "
        f"{aliases} aliases resolve")  # fmt: skip


def upgrade_native(state_dir: Path, backups: Path, keep_scratch: bool, say: Say) -> Path:
    if not (state_dir / "env").exists():
        raise PlatformError(f"no local platform in {state_dir}: nothing to upgrade")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = backups / f"pre-upgrade-{stamp}.tar.gz"
    say(f"upgrade: 1/4 backing up {state_dir} to {archive}")
    manifest = create_backup(native_target(state_dir), archive, say)
    expected_runs = manifest.table_counts.get("runs", 0)

    scratch = Path(tempfile.mkdtemp(prefix="mlstack-upgrade-rehearsal-"))
    try:
        say(f"upgrade: 2/4 restoring into a scratch platform ({scratch})")
        from mlstack.local.processes import choose_free_ports

        mlflow_port, serving_port, s3_port = choose_free_ports(3)
        local("up", "--state-dir", str(scratch), "--workers", "1", "--mlflow-port",
              str(mlflow_port), "--serving-port", str(serving_port), "--s3-port", str(s3_port))  # fmt: skip
        stop_tracking_and_serving(scratch)
        empty_database(scratch)
        restore_backup(native_target(scratch), archive, force=False, say=say)
        say("upgrade: 3/4 migrating the scratch platform (mlflow db upgrade) and checking it")
        local("up", "--state-dir", str(scratch))
        smoke_check(native_uri(scratch), expected_runs, say)
    except PlatformError as error:
        raise PlatformError(
            f"the rehearsal failed; {state_dir} is unchanged (backup: {archive}):\n{error}"
        ) from None
    finally:
        if keep_scratch:
            say(f"upgrade: scratch platform kept in {scratch} (`mlstack local down --state-dir`)")
        else:
            try:
                local("down", "--state-dir", str(scratch))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    say(f"upgrade: 4/4 migrating {state_dir}")
    local("down", "--state-dir", str(state_dir))
    local("up", "--state-dir", str(state_dir))
    smoke_check(native_uri(state_dir), expected_runs, say)
    say(f"upgrade: done; to roll back, restore {archive} into a platform of the old version")
    return archive


def compose_run(compose: Compose, *args: str, what: str) -> None:
    run_tool(compose.command(*args), what)


def compose_up(compose: Compose, *services: str) -> None:
    wait = ("--wait", "--wait-timeout", str(UP_WAIT_SECONDS))
    compose_run(compose, "up", "-d", "--build", *wait, *services,
                what=f"docker compose up ({compose.project_name or 'the project'})")  # fmt: skip


def empty_compose_database(compose: Compose) -> None:
    """DROP and CREATE the project's database (what the new MLflow made of the empty one)."""
    script = (
        'psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres '
        '-c "DROP DATABASE \\"$POSTGRES_DB\\" WITH (FORCE)" '
        '-c "CREATE DATABASE \\"$POSTGRES_DB\\""'
    )
    run_tool(compose.exec_command("postgres", "sh", "-c", script), "emptying the scratch database")


def upgrade_compose(project_dir: Path, backups: Path, keep_scratch: bool, say: Say) -> Path:
    from mlstack.local.processes import choose_free_ports

    real = Compose(project_dir)
    target = compose_target(project_dir, real)  # refuses a project that is not running
    name = str(real.project_config().get("name") or "mlstack")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = backups / f"pre-upgrade-{stamp}.tar.gz"
    say(f"upgrade: 1/4 backing up {target.description} to {archive}")
    manifest = create_backup(target, archive, say)
    expected_runs = manifest.table_counts.get("runs", 0)

    ports = choose_free_ports(len(BIND_VARIABLES))
    scratch = Compose(
        project_dir,
        project_name=f"{name}-upgrade-rehearsal",
        environment=tuple(
            (k, f"127.0.0.1:{p}") for k, p in zip(BIND_VARIABLES, ports, strict=True)
        ),
    )
    try:
        say(f"upgrade: 2/4 restoring into a scratch compose project ({scratch.project_name}, "
            "the new images)")  # fmt: skip
        compose_run(scratch, "down", "--volumes", "--remove-orphans", what="clearing the scratch")
        compose_up(scratch)
        compose_run(scratch, "stop", "serving", what="stopping the scratch serving")
        empty_compose_database(scratch)
        restore_backup(compose_target(project_dir, scratch), archive, force=False, say=say)
        say("upgrade: 3/4 migrating the scratch project (mlflow db upgrade) and checking it")
        compose_run(scratch, "stop", "mlflow", what="stopping the scratch mlflow")
        compose_up(scratch)
        smoke_check(published_tracking_uri(scratch), expected_runs, say)
    except PlatformError as error:
        raise PlatformError(
            f"the rehearsal failed; compose project {name} is unchanged (backup: {archive}):\n"
            f"{error}"
        ) from None
    finally:
        if keep_scratch:
            say(f"upgrade: scratch project kept: `docker compose -p {scratch.project_name} "
                "down -v --rmi local` removes it")  # fmt: skip
        else:
            compose_run(scratch, "down", "--volumes", "--remove-orphans", "--rmi", "local",
                        what="removing the scratch project")  # fmt: skip

    say(f"upgrade: 4/4 migrating compose project {name}")
    compose_run(real, "stop", "serving", "mlflow", what="stopping mlflow and serving")
    compose_up(real)
    smoke_check(published_tracking_uri(real), expected_runs, say)
    say(f"upgrade: done; to roll back, restore {archive} into a stack of the old version "
        "(docs/upgrades.md)")  # fmt: skip
    return archive


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "upgrade",
        help="migrate the platform to this checkout's MLflow, rehearsed on a copy first",
        description="Back up, restore into a scratch platform, migrate and check it there; only "
        "then migrate the real platform. A failed rehearsal changes nothing.",
    )
    add_target_options(parser)
    parser.add_argument(
        "--backups", type=Path, default=Path("backups"), help="where the backup goes (backups/)"
    )
    parser.add_argument(
        "--keep-scratch", action="store_true", help="keep the rehearsal's scratch platform"
    )
    parser.set_defaults(func=cmd_upgrade)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from mlstack.settings import get_settings

    backups = args.backups.resolve()
    if args.compose:
        return reporting_errors(
            "mlstack upgrade", lambda: upgrade_compose(Path.cwd(), backups, args.keep_scratch, say)
        )
    state_dir = (args.state_dir or get_settings().state_dir).resolve()
    return reporting_errors(
        "mlstack upgrade", lambda: upgrade_native(state_dir, backups, args.keep_scratch, say)
    )
