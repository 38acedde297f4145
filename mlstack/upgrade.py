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

Native platform only (the local venv is the "new version" once `scripts/bootstrap.sh` ran); for
Compose, docs/upgrades.md describes the same steps by hand.
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
from mlstack.platform.common import PlatformError, Say, reporting_errors, say
from mlstack.platform.target import native_target

HEALTH_TIMEOUT_SECONDS = 300
LOCAL_TIMEOUT_SECONDS = 900


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


def smoke_check(state_dir: Path, expected_runs: int, say: Say) -> None:
    """The pinned client sees the archive's runs and versions; every alias resolves."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from mlstack.local.state import read_env_file

    uri = read_env_file(state_dir / "env")["MLFLOW_TRACKING_URI"]
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
        smoke_check(scratch, expected_runs, say)
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
    smoke_check(state_dir, expected_runs, say)
    say(f"upgrade: done; to roll back, restore {archive} into a platform of the old version")
    return archive


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "upgrade",
        help="migrate the native platform to this checkout's MLflow, rehearsed on a copy first",
        description="Back up, restore into a scratch platform, migrate and check it there; only "
        "then migrate the real platform. A failed rehearsal changes nothing.",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="the native platform's state dir (default: .mlstack)"
    )
    parser.add_argument(
        "--backups", type=Path, default=Path("backups"), help="where the backup goes (backups/)"
    )
    parser.add_argument(
        "--keep-scratch", action="store_true", help="keep the rehearsal's scratch platform"
    )
    parser.set_defaults(func=cmd_upgrade)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from mlstack.settings import get_settings

    state_dir = (args.state_dir or get_settings().state_dir).resolve()
    return reporting_errors(
        "mlstack upgrade",
        lambda: upgrade_native(state_dir, args.backups.resolve(), args.keep_scratch, say),
    )
