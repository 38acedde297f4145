"""Backup and restore of the Compose stack, end to end, the way docs/backup-restore.md tells users to do it.

Train all three models → `scripts/backup.sh --compose -o ARCHIVE` → `docker compose down -v`
(every container and both data volumes gone) → `up -d --wait` on empty volumes →
`scripts/restore.sh --compose ARCHIVE` → the same runs, params, metrics, registered versions and
aliases (psql in the postgres container), the same objects with the same sha256 (boto3 in the
mlflow container), and serving answers with the same predictions for every champion.

Its own compose project (`mlstack-e2e-backup`) on free ports, from tests/e2e/conftest.py. The
same stack (no second `up`) then serves `scripts/gc.sh --compose` (docs/gc.md), `mlstack import
--compose` (a SQLite store, a file store, then another tracking server's URL) and, last,
`scripts/upgrade.sh --compose` of a database an older MLflow wrote: tests with data of their own
that pass alone or after the ones before them (the upgrade test replaces the stack's database, so
it runs last).
tests/e2e/compose.stores-published.yml (test only) publishes PostgreSQL and S3 on loopback for the
older MLflow running on the host.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.docker

COMPOSE_PROJECT = "mlstack-e2e-backup"
COMPOSE_OVERLAYS = ("tests/e2e/compose.stores-published.yml",)
MODELS = ("linear_model", "logistic_model", "random_forest_model")
SCRIPT_TIMEOUT = 600

# What must come back, each as a sorted list of rows.
QUERIES = {
    "runs": "SELECT run_uuid, experiment_id, name, status, lifecycle_stage, start_time, end_time "
    "FROM runs ORDER BY run_uuid",
    "params": "SELECT run_uuid, key, value FROM params ORDER BY run_uuid, key",
    "metrics": "SELECT run_uuid, key, value, step, timestamp FROM metrics "
    "ORDER BY run_uuid, key, step, timestamp",
    "tags": "SELECT run_uuid, key, value FROM tags ORDER BY run_uuid, key",
    "registered_models": "SELECT name FROM registered_models ORDER BY name",
    "model_versions": "SELECT name, version, run_id, source, storage_location, status "
    "FROM model_versions ORDER BY name, version::int",
    "aliases": "SELECT name, alias, version FROM registered_model_aliases ORDER BY name, alias",
}


def snapshot(stack: Stack) -> dict[str, Any]:
    """Everything the restore must reproduce, read through independent clients."""
    state: dict[str, Any] = {name: stack.psql(sql) for name, sql in QUERIES.items()}
    state["objects"] = stack.bucket_objects()
    return state


def predictions(stack: Stack, champions: dict[str, str]) -> dict[str, list[Any]]:
    """Each champion's answer on its own data set, once serving holds that version."""
    served = {}
    for model in MODELS:
        path = "/invocations" if model == "linear_model" else f"/models/{model}/invocations"
        payload = stack.dataset_payload(model, rows=3)
        answer = stack.wait_for_version(champions[model], path, payload)
        served[model] = answer.json()["predictions"]
    return served


def test_backup_down_v_up_restore_gives_back_everything(stack: Stack, tmp_path: Path) -> None:
    for model in MODELS:
        stack.assert_trained(stack.train(model))
    before = snapshot(stack)
    champions = {name: version for name, _, version in before["aliases"]}
    assert set(champions) == set(MODELS)
    assert len(before["runs"]) == len(MODELS) and before["metrics"] and before["params"]
    assert any(key.endswith("/MLmodel") for key in before["objects"]), before["objects"]
    served_before = predictions(stack, champions)

    archive = tmp_path / "stack.tar.gz"
    result = stack.script("backup.sh", "--compose", "-o", str(archive), timeout=SCRIPT_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert archive.is_file()

    # Disaster: containers and both data volumes gone; then an empty platform.
    stack.compose("--profile", "train", "down", "--volumes", timeout=180)
    stack.up("up on empty volumes")
    assert stack.psql("SELECT count(*) FROM runs") == [["0"]]
    assert stack.bucket_objects() == {}

    result = stack.script("restore.sh", "--compose", str(archive), timeout=SCRIPT_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restore: OK" in result.stdout, result.stdout

    after = snapshot(stack)
    for name in QUERIES:
        assert after[name] == before[name], name
    assert after["objects"] == before["objects"]  # same keys, same sha256
    # Serving (up since before the restore) finds the restored champions in the registry.
    assert predictions(stack, champions) == served_before


# --- `scripts/gc.sh --compose` on the same stack (its own data; independent of the test above) ---

GC_MODEL = "gc_compose"
GC_ORPHANS = 1105  # more than one page of a listing and of a batched delete
PLANT = (
    "import os, sys\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "import boto3\n"
    "from botocore.config import Config\n"
    "client = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'],"
    " config=Config(s3={'addressing_style': 'path'}))\n"
    "keys = sys.argv[1:]\n"
    "with ThreadPoolExecutor(8) as pool:\n"
    "    list(pool.map(lambda k: client.put_object(Bucket='mlflow', Key=k, Body=b'x'), keys))\n"
)


def stock_script(stack: Stack, *args: str) -> dict[str, Any]:
    """tests/stock_mlflow.py from the host, against the stack's published tracking server."""
    import json
    import subprocess
    import sys

    env = {**stack.env, "MLFLOW_TRACKING_URI": stack.mlflow_url}
    script = Path(__file__).resolve().parents[1] / "stock_mlflow.py"
    result = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                            text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_gc_removes_deleted_runs_and_orphans_and_keeps_versions(stack: Stack) -> None:
    from mlflow import MlflowClient

    kept = stock_script(stack, "--experiment", "gc-kept", "--runs", "3", "--model", GC_MODEL)
    gone = stock_script(stack, "--experiment", "gc-gone", "--runs", "1")
    path, payload = f"/models/{GC_MODEL}/invocations", {"inputs": [[0.2, 0.9, 0.4]]}
    served_before = stack.wait_for_version("2", path, payload).json()

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    for run in kept["runs"]:
        client.delete_run(run["run_id"])
    client.delete_logged_model(kept["runs"][2]["model_id"])
    client.delete_experiment(gone["experiment_id"])
    orphan_keys = [f"artifacts/{kept['experiment_id']}/feedface/artifacts/o-{n:05d}"
                   for n in range(GC_ORPHANS)]  # fmt: skip
    stack.compose("exec", "-T", "mlflow", "python", "-c", PLANT, *orphan_keys, timeout=600)

    def folder(uri: str) -> str:
        return "artifacts/" + uri.removeprefix("mlflow-artifacts:").strip("/") + "/"

    uris = dict(stack.psql("SELECT run_uuid, artifact_uri FROM runs"))
    locations = dict(stack.psql("SELECT model_id, artifact_location FROM logged_models"))
    versions = stack.psql("SELECT version, run_id, storage_location FROM model_versions "
                          f"WHERE name = '{GC_MODEL}' ORDER BY version")  # fmt: skip
    aliases = stack.psql("SELECT name, alias, version FROM registered_model_aliases ORDER BY 1, 2")
    before = set(stack.bucket_keys())

    dry = stack.script("gc.sh", "--compose", "--orphans", "--dry-run", timeout=SCRIPT_TIMEOUT)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"would delete orphans: {GC_ORPHANS} objects, {GC_ORPHANS} bytes" in dry.stdout
    assert set(stack.bucket_keys()) == before

    real = stack.script("gc.sh", "--compose", "--orphans", timeout=SCRIPT_TIMEOUT)
    assert real.returncode == 0, real.stdout + real.stderr
    after = set(stack.bucket_keys())

    going_runs = [kept["runs"][2]["run_id"], gone["runs"][0]["run_id"]]
    going_models = [kept["runs"][2]["model_id"], gone["runs"][0]["model_id"]]
    went = set(orphan_keys)
    for run_id in going_runs:
        assert stack.psql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}'") == [["0"]]
        assert stack.psql(f"SELECT count(*) FROM runs WHERE run_uuid = '{run_id}'") == [["0"]]
        went |= {k for k in before if k.startswith(folder(uris[run_id]))}
    for model_id in going_models:
        assert stack.psql(f"SELECT count(*) FROM logged_models WHERE model_id = '{model_id}'") == [["0"]]  # fmt: skip
        went |= {k for k in before if k.startswith(folder(locations[model_id]))}
    assert stack.psql(f"SELECT count(*) FROM experiments WHERE experiment_id = {gone['experiment_id']}") == [["0"]]  # fmt: skip
    assert after == before - went, sorted(before - went - after)[:5]

    # Registered versions: rows, runs and files untouched; the champion still answers.
    assert stack.psql("SELECT version, run_id, storage_location FROM model_versions "
                      f"WHERE name = '{GC_MODEL}' ORDER BY version") == versions  # fmt: skip
    assert stack.psql("SELECT name, alias, version FROM registered_model_aliases ORDER BY 1, 2") == aliases  # fmt: skip
    for _, run_id, location in versions:
        files = {k for k in before if k.startswith(folder(location))}
        assert any(k.endswith("/MLmodel") for k in files) and files <= after
        assert stack.psql(f"SELECT count(*) FROM runs WHERE run_uuid = '{run_id}'") == [["1"]]
    assert stack.wait_for_version("2", path, payload).json() == served_before

    again = stack.script("gc.sh", "--compose", "--orphans", timeout=SCRIPT_TIMEOUT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done: 0 runs, 0 logged models, 0 experiments, 0 objects (0 bytes)" in again.stdout


# --- `mlstack import --compose` on the same stack (its own data; independent of the tests above) ---

# source kind -> (the stock script's MLflow environment, what `mlstack import` is given)
LOCAL_SOURCES = {
    "sqlite": ({"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, "mlflow.db"),
    "mlruns": (
        {"MLFLOW_TRACKING_URI": "file:./mlruns", "MLFLOW_ALLOW_FILE_STORE": "true"},
        "mlruns",
    ),
}


@pytest.mark.parametrize("kind", list(LOCAL_SOURCES))
def test_import_of_a_stock_local_store_arrives_once(
    stack: Stack, tmp_path: Path, kind: str
) -> None:
    """A SQLite `mlflow.db` + `./mlruns`, or a file store `./mlruns`, made by a stock MLflow
    script, imported twice."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    source_env, argument = LOCAL_SOURCES[kind]
    model = f"imported_{kind}_model"
    made = subprocess.run([sys.executable, str(repo / "tests" / "stock_mlflow.py"), "--experiment",
                           f"imported-from-{kind}", "--runs", "3", "--model", model],
                          cwd=tmp_path, env={**stack.env, **source_env}, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    source = json.loads(made.stdout.strip().splitlines()[-1])

    def run_import() -> subprocess.CompletedProcess[str]:
        return stack.mlstack("import", str(tmp_path / argument), "--compose", timeout=900)

    first = run_import()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "import: runs: 3 imported, 0 already there" in first.stdout
    assert "import: verified" in first.stdout

    for run in source["runs"]:
        rows = stack.psql("SELECT r.run_uuid, r.artifact_uri FROM runs r JOIN tags t ON "
                          "t.run_uuid = r.run_uuid WHERE t.key = 'mlstack.import.source_run' "
                          f"AND t.value = '{run['run_id']}'")  # fmt: skip
        assert len(rows) == 1, run
        run_id, uri = rows[0]
        points = stack.psql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}'")
        assert points == [["6"]]  # 5 loss steps + accuracy
        prefix = "artifacts/" + uri.removeprefix("mlflow-artifacts:").strip("/") + "/"
        folder = tmp_path / "mlruns" / str(source["experiment_id"]) / run["run_id"] / "artifacts"
        want = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert {k.removeprefix(prefix) for k in stack.bucket_keys(prefix)} == want
    assert stack.psql("SELECT alias, version FROM registered_model_aliases "
                      f"WHERE name = '{model}'") == [["champion", "2"]]  # fmt: skip
    path, payload = f"/models/{model}/invocations", {"inputs": [[0.2, 0.9, 0.4]]}
    assert stack.wait_for_version("2", path, payload).status_code == 200

    counts = stack.psql("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics), "
                        "(SELECT count(*) FROM model_versions)")  # fmt: skip
    second = run_import()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "import: runs: 0 imported, 3 already there" in second.stdout
    assert "import: versions: 0 imported, 2 already there" in second.stdout
    assert stack.psql("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics), "
                      "(SELECT count(*) FROM model_versions)") == counts  # fmt: skip


SERVER_MODEL = "imported_server_model"


def test_import_from_another_tracking_server_arrives_once(stack: Stack, tmp_path: Path) -> None:
    """A stock `mlflow server` (SQLite, its own artifact root) imported by its URL, twice."""
    import subprocess
    import sys

    from stock_server import stock_server

    repo = Path(__file__).resolve().parents[2]
    folder = tmp_path / "server"
    with stock_server(folder) as url:
        made = subprocess.run([sys.executable, str(repo / "tests" / "stock_mlflow.py"),
                               "--experiment", "imported-from-server", "--runs", "2", "--model",
                               SERVER_MODEL], cwd=tmp_path, capture_output=True, text=True,
                              env={**stack.env, "MLFLOW_TRACKING_URI": url}, timeout=600,
                              check=False)  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        import json

        source = json.loads(made.stdout.strip().splitlines()[-1])

        def run_import() -> subprocess.CompletedProcess[str]:
            return stack.mlstack("import", url, "--compose", timeout=900)

        first = run_import()
        assert first.returncode == 0, first.stdout + first.stderr
        assert "import: runs: 2 imported, 0 already there" in first.stdout, first.stdout
        assert "import: verified" in first.stdout
        counts = stack.psql("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics), "
                            "(SELECT count(*) FROM model_versions), "
                            "(SELECT count(*) FROM logged_models)")  # fmt: skip
        second = run_import()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "import: runs: 0 imported, 2 already there" in second.stdout, second.stdout
    assert "import: logged models: 0 imported, 2 already there" in second.stdout
    assert "import: versions: 0 imported, 2 already there" in second.stdout
    assert stack.psql("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics), "
                      "(SELECT count(*) FROM model_versions), "
                      "(SELECT count(*) FROM logged_models)") == counts  # fmt: skip

    # The source read without MLflow: its backend database and its artifact root.
    import sqlite3

    database = sqlite3.connect(folder / "mlflow.db")
    for run in source["runs"]:
        source_id = run["run_id"]
        want_params = dict(database.execute("SELECT key, value FROM params WHERE run_uuid = ?",
                                            (source_id,)))  # fmt: skip
        want_points = sorted([k, float(v), str(t), str(s)] for k, v, t, s in database.execute(
            "SELECT key, value, timestamp, step FROM metrics WHERE run_uuid = ?", (source_id,)))  # fmt: skip
        rows = stack.psql("SELECT r.run_uuid, r.artifact_uri, r.status FROM runs r JOIN tags t "
                          "ON t.run_uuid = r.run_uuid WHERE t.key = 'mlstack.import.source_run' "
                          f"AND t.value = '{source_id}'")  # fmt: skip
        assert len(rows) == 1, run
        run_id, uri, status = rows[0]
        assert status == "FINISHED"
        assert (
            dict(stack.psql(f"SELECT key, value FROM params WHERE run_uuid = '{run_id}'"))
            == want_params
        )
        have_points = sorted([k, float(v), t, s] for k, v, t, s in stack.psql(
            f"SELECT key, value, timestamp, step FROM metrics WHERE run_uuid = '{run_id}'"))  # fmt: skip
        assert have_points == want_points and len(want_points) == 6
        prefix = "artifacts/" + uri.removeprefix("mlflow-artifacts:").strip("/") + "/"
        artifacts = folder / "mlruns" / str(source["experiment_id"]) / source_id / "artifacts"
        want = {p.relative_to(artifacts).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in artifacts.rglob("*") if p.is_file()}  # fmt: skip
        assert any(key.endswith(".png") for key in want)
        have = {k.removeprefix(prefix): v for k, v in stack.bucket_objects(prefix).items()}
        assert have == want, run
    database.close()
    assert stack.psql("SELECT alias, version FROM registered_model_aliases "
                      f"WHERE name = '{SERVER_MODEL}'") == [["champion", "2"]]  # fmt: skip
    assert stack.psql("SELECT value FROM model_version_tags WHERE "
                      f"name = '{SERVER_MODEL}' AND version = 1 AND key = 'validated'") == [["yes"]]  # fmt: skip


# --- `scripts/upgrade.sh --compose` of a database an older MLflow wrote (runs last: it replaces the
# stack's database) ---

# The last 2.x and the first 3.x, as in the native test (tests/reliability/test_upgrade.py). Each
# case replaces the stack's database with one the old release writes, then upgrades it.
OLD_RELEASES = ("2.22.5", "3.0.0")
UPGRADED_MODEL = "upgraded_model"


def published(stack: Stack, service: str, port: str) -> str:
    address = stack.compose("port", service, port).stdout.strip().splitlines()[0]
    return address.rpartition(":")[2]


@pytest.mark.parametrize("release", OLD_RELEASES)
def test_upgrade_of_an_older_mlflow_database_rehearses_then_migrates(
    stack: Stack, tmp_path: Path, release: str
) -> None:
    """An older MLflow (2.22.5, then 3.0.0) on the host writes history into the stack's own
    PostgreSQL and bucket (the old platform's data); `scripts/upgrade.sh --compose` backs up,
    rehearses on a scratch compose project, then migrates the stack; runs, metric histories,
    versions, tags, the alias, the stage and the old champion's predictions are there through the
    pinned client, psql and serving."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests
    from alembic.script import ScriptDirectory
    from mlflow import MlflowClient
    from mlflow.store.db.utils import _get_alembic_config

    repo = Path(__file__).resolve().parents[2]
    venv = subprocess.run([str(repo / "scripts" / "old-mlflow-venv.sh"), release],
                          capture_output=True, text=True, timeout=1200, check=False, cwd=repo,
                          env={**stack.env, "PYTHON": sys.executable})  # fmt: skip
    assert venv.returncode == 0, venv.stderr[-3000:]
    old_python = venv.stdout.strip().splitlines()[-1]

    # The old platform's database: empty, as the old MLflow server creates it.
    stack.compose("stop", "serving")
    for statement in ("DROP DATABASE mlflow WITH (FORCE)", "CREATE DATABASE mlflow"):
        stack.compose("exec", "-T", "postgres", "psql", "-U", "mlflow", "-d", "postgres",
                      "-v", "ON_ERROR_STOP=1", "-c", statement)  # fmt: skip
    docker_env = stack.read_docker_env()
    pg = f"postgresql://mlflow:{docker_env['POSTGRES_PASSWORD']}@127.0.0.1:{published(stack, 'postgres', '5432')}/mlflow"
    port = free_loopback_port()
    env = {**stack.env, "AWS_ACCESS_KEY_ID": docker_env["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": docker_env["AWS_SECRET_ACCESS_KEY"],
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{published(stack, 'minio', '9000')}"}  # fmt: skip
    log = tmp_path / "old-server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [old_python, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", pg, "--serve-artifacts", "--artifacts-destination",
             "s3://mlflow/artifacts", "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 240
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=3).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        made = subprocess.run(
            [old_python, str(repo / "tests" / "old_mlflow_history.py"), "--model", UPGRADED_MODEL],
            capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
            env={**env, "MLFLOW_TRACKING_URI": url},
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr[-4000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    history = json.loads(made.stdout.strip().splitlines()[-1])
    assert history["mlflow"] == release
    old_revision = stack.psql("SELECT version_num FROM alembic_version")

    upgrade = stack.script("upgrade.sh", "--compose", "--backups", str(tmp_path / "backups"),
                           timeout=2400)  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    out = upgrade.stdout
    steps = [out.index(f"upgrade: {n}/4") for n in range(1, 5)]
    assert steps == sorted(steps), out
    assert "restore: OK" in out[steps[1] : steps[2]], out  # the scratch copy matches the backup
    assert "upgrade: check OK" in out[steps[2] : steps[3]] and "check OK" in out[steps[3] :], out
    assert list((tmp_path / "backups").glob("pre-upgrade-*.tar.gz"))
    scratch = f"{stack.project}-upgrade-rehearsal"
    leftovers = subprocess.run(["docker", "ps", "-aq", "--filter",
                                f"label=com.docker.compose.project={scratch}"],
                               capture_output=True, text=True, check=True)  # fmt: skip
    assert leftovers.stdout.strip() == "", "the scratch project is removed"

    head = ScriptDirectory.from_config(_get_alembic_config(pg)).get_current_head()
    assert stack.psql("SELECT version_num FROM alembic_version") == [[head]] != old_revision

    client = MlflowClient(tracking_uri=stack.mlflow_url)
    for index, run_id in enumerate(history["runs"]):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == f"old-{index}"
        assert run.data.params == {"C": str(1.0 + index), "solver": "lbfgs"}
        assert run.data.tags["made_by"] == f"mlflow {release}"
        points = sorted([m.key, m.value, m.timestamp, m.step] for key in ("loss", "accuracy")
                        for m in client.get_metric_history(run_id, key))  # fmt: skip
        assert points == history["metrics"][run_id] and len(points) == 11
    versions = {v.version: v for v in client.search_model_versions(f"name = '{UPGRADED_MODEL}'")}
    assert [versions[k].run_id for k in sorted(versions, key=int)] == history["runs"]
    assert client.get_registered_model(UPGRADED_MODEL).aliases == {"champion": "2"}
    assert client.get_model_version(UPGRADED_MODEL, "1").tags.get("validated") == "yes"
    # 2.x stages: deprecated in 3.x, still reported as set.
    assert client.get_model_version(UPGRADED_MODEL, "1").current_stage == "Production"
    assert stack.psql("SELECT current_stage FROM model_versions WHERE "
                      f"name = '{UPGRADED_MODEL}' AND version = 1") == [["Production"]]  # fmt: skip

    path, payload = f"/models/{UPGRADED_MODEL}/invocations", {"inputs": history["probe"]}
    answer = stack.wait_for_version("2", path, payload)
    assert [int(p) for p in answer.json()["predictions"]] == history["predictions"]


def free_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
