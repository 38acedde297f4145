"""Backup and restore of the Compose stack, end to end, the way docs/backup-restore.md tells users to do it.

Train all three models → `scripts/backup.sh --compose -o ARCHIVE` → `docker compose down -v`
(every container and both data volumes gone) → `up -d --wait` on empty volumes →
`scripts/restore.sh --compose ARCHIVE` → the same runs, params, metrics, registered versions and
aliases (psql in the postgres container), the same objects with the same sha256 (boto3 in the
mlflow container), and serving answers with the same predictions for every champion.

Its own compose project (`mlstack-e2e-backup`) on free ports, from tests/e2e/conftest.py. The
same stack (no second `up`) then serves `scripts/gc.sh --compose` (docs/gc.md), a test with data of
its own that passes alone or after the backup test.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.docker

COMPOSE_PROJECT = "mlstack-e2e-backup"
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

IMPORT_MODEL = "imported_sqlite_model"


def test_import_of_a_stock_sqlite_store_arrives_once(stack: Stack, tmp_path: Path) -> None:
    """A SQLite `mlflow.db` + `./mlruns` made by a stock MLflow script, imported twice."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**stack.env, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    made = subprocess.run([sys.executable, str(repo / "tests" / "stock_mlflow.py"), "--experiment",
                           "imported-from-sqlite", "--runs", "3", "--model", IMPORT_MODEL],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    source = json.loads(made.stdout.strip().splitlines()[-1])

    def run_import() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mlstack", "import", str(tmp_path / "mlflow.db"), "--compose"],
            cwd=repo, capture_output=True, text=True, timeout=900, check=False,
            env={**stack.env, "COMPOSE_FILE": ":".join(stack.files),
                 "COMPOSE_PROJECT_NAME": stack.project},
        )  # fmt: skip

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
                      f"WHERE name = '{IMPORT_MODEL}'") == [["champion", "2"]]  # fmt: skip
    path, payload = f"/models/{IMPORT_MODEL}/invocations", {"inputs": [[0.2, 0.9, 0.4]]}
    assert stack.wait_for_version("2", path, payload).status_code == 200

    counts = stack.psql("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics), "
                        "(SELECT count(*) FROM model_versions)")  # fmt: skip
    second = run_import()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "import: runs: 0 imported, 3 already there" in second.stdout
    assert "import: versions: 0 imported, 2 already there" in second.stdout
    assert stack.psql("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics), "
                      "(SELECT count(*) FROM model_versions)") == counts  # fmt: skip
