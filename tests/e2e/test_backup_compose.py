"""Backup and restore of the Compose stack, end to end, the way docs/backup-restore.md tells users to do it.

Train all three models → `scripts/backup.sh --compose -o ARCHIVE` → `docker compose down -v`
(every container and both data volumes gone) → `up -d --wait` on empty volumes →
`scripts/restore.sh --compose ARCHIVE` → the same runs, params, metrics, registered versions and
aliases (psql in the postgres container), the same objects with the same sha256 (boto3 in the
mlflow container), and serving answers with the same predictions for every champion.

Its own compose project (`mlstack-e2e-backup`) on free ports, from tests/e2e/conftest.py.
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
