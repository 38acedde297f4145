"""The trainers end to end on the local platform, checked through independent clients.

Each trainer runs as the exact user command (`python <model>/train.py`) in a subprocess whose
environment holds only the tracking URI: no S3 credentials (artifacts are proxied). Outcomes are
read back with psycopg2 (rows in PostgreSQL), boto3 (objects in the bucket) and HTTP (serving).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from trainer_helpers import (
    MODELS,
    Trained,
    split_payload,
    train,
    trainer_env,
    wait_until_served,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_METRICS = {
    "linear_model": {"rmse", "mae", "r2", "fit_time_seconds"},
    "logistic_model": {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
    "random_forest_model": {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"},
}
EXPECTED_PLOTS = {
    "linear_model": {"predicted_vs_actual.png", "residuals.png", "coefficients.png", "coefficients.csv"},
    "logistic_model": {"confusion_matrix.png", "roc_curve.png", "coefficients.png"},
    "random_forest_model": {"confusion_matrix.png", "roc_curve.png", "feature_importances.png",
                            "feature_importances.csv"},
}  # fmt: skip


def query(conn: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def runs_of(conn: Any, experiment: str) -> list[tuple[str, str, str]]:
    """(run id, run name, status) of live runs in an experiment, oldest first."""
    return query(
        conn,
        "SELECT r.run_uuid, r.name, r.status FROM runs r JOIN experiments e"
        " ON r.experiment_id = e.experiment_id"
        " WHERE e.name = %s AND r.lifecycle_stage = 'active' ORDER BY r.start_time",
        experiment,
    )


def alias_version(conn: Any, model: str, alias: str = "champion") -> str | None:
    rows = query(
        conn,
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
        model,
        alias,
    )
    return str(rows[0][0]) if rows else None


def versions_of(conn: Any, model: str) -> list[tuple[str, str, str]]:
    """(version, run id, storage location) of a registered model, oldest first."""
    rows = query(
        conn,
        "SELECT version, run_id, storage_location FROM model_versions"
        " WHERE name = %s ORDER BY version",
        model,
    )
    return [(str(v), r, s) for v, r, s in rows]


def metric(conn: Any, run_id: str, key: str) -> float:
    rows = query(
        conn, "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = %s", run_id, key
    )
    return float(rows[0][0])


def tag(conn: Any, run_id: str, key: str) -> str | None:
    rows = query(conn, "SELECT value FROM tags WHERE run_uuid = %s AND key = %s", run_id, key)
    return rows[0][0] if rows else None


def bucket_keys(platform: Any, s3: Any, prefix: str) -> list[str]:
    full = f"{platform.env['MLSTACK_ARTIFACTS_PREFIX']}/{prefix}".replace("//", "/")
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket, Prefix=full):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def storage_prefix(location: str) -> str:
    """`mlflow-artifacts:/1/models/m-…/artifacts` -> `1/models/m-…/artifacts`."""
    return location.split(":", 1)[1].lstrip("/")


@pytest.fixture(scope="module")
def trained(local_platform: Any) -> dict[str, Trained]:
    results = {model: train(local_platform, model) for model in MODELS}
    for model, result in results.items():
        assert result.returncode == 0, f"{model} failed:\n{result.stdout}\n{result.stderr}"
    return results


def test_each_trainer_records_its_run_params_and_metrics_in_postgres(
    trained: dict[str, Trained], pg_conn: Any
) -> None:
    for model in MODELS:
        runs = runs_of(pg_conn, model)
        assert runs, f"no run for {model} in PostgreSQL"
        run_id, name, status = runs[-1]
        assert status == "FINISHED" and name == model
        params = dict(query(pg_conn, "SELECT key, value FROM params WHERE run_uuid = %s", run_id))
        shipped = json.loads((ROOT / model / "params.json").read_text())
        assert params["registered_model_name"] == model
        assert params["data.dataset"] == shipped["data"]["dataset"]
        assert params["promote.metric"] == shipped["promote"]["metric"]
        metrics = {
            k
            for (k,) in query(pg_conn, "SELECT key FROM latest_metrics WHERE run_uuid = %s", run_id)
        }
        assert EXPECTED_METRICS[model] <= metrics
        assert len(tag(pg_conn, run_id, "mlstack.params_sha256") or "") == 64
        assert tag(pg_conn, run_id, "mlstack.dataset.digest")
        inputs = query(pg_conn, "SELECT count(*) FROM inputs WHERE destination_id = %s", run_id)
        assert inputs[0][0] >= 1, "the data set was not logged with mlflow.log_input"
        assert run_id in trained[model].stdout  # the summary names the run


def test_models_and_plots_are_objects_in_the_bucket(
    trained: dict[str, Trained], local_platform: Any, pg_conn: Any, s3_client: Any
) -> None:
    for model in MODELS:
        version, run_id, location = versions_of(pg_conn, model)[-1]
        experiment_id = query(
            pg_conn, "SELECT experiment_id FROM runs WHERE run_uuid = %s", run_id
        )[0][0]
        plots = {
            k.rsplit("/", 1)[-1]
            for k in bucket_keys(
                local_platform, s3_client, f"{experiment_id}/{run_id}/artifacts/plots/"
            )
        }
        assert EXPECTED_PLOTS[model] <= plots, f"{model}: plots in bucket: {plots}"
        model_files = {
            k.rsplit("/", 1)[-1]
            for k in bucket_keys(local_platform, s3_client, storage_prefix(location))
        }
        assert {"MLmodel", "model.skops"} <= model_files, f"{model} v{version}: {model_files}"


def test_first_version_of_each_model_holds_champion(
    trained: dict[str, Trained], pg_conn: Any
) -> None:
    for model in MODELS:
        champion = alias_version(pg_conn, model)
        latest_version, latest_run, _ = versions_of(pg_conn, model)[-1]
        assert champion == latest_version
        assert tag(pg_conn, latest_run, "mlstack.promotion.decision") == "promoted"
        assert "promoted to @champion" in trained[model].stdout


def test_a_worse_run_is_registered_but_leaves_the_alias(
    trained: dict[str, Trained], local_platform: Any, pg_conn: Any
) -> None:
    before = alias_version(pg_conn, "linear_model")
    result = train(local_platform, "linear_model", "--set", "alpha=5000")
    assert result.returncode == 0, result.stderr
    version, run_id, _ = versions_of(pg_conn, "linear_model")[-1]
    assert version != before
    assert alias_version(pg_conn, "linear_model") == before
    assert tag(pg_conn, run_id, "mlstack.promotion.decision") == "kept"
    assert "@champion unchanged" in result.stdout


def test_a_sweep_registers_only_its_best_child(
    trained: dict[str, Trained], local_platform: Any, pg_conn: Any
) -> None:
    before = versions_of(pg_conn, "linear_model")
    sweep = json.dumps({"alpha": [0.5, 3000.0], "estimator": ["ridge"]})
    result = train(local_platform, "linear_model", "--set", f"sweep={sweep}")
    assert result.returncode == 0, result.stderr
    after = versions_of(pg_conn, "linear_model")
    assert len(after) == len(before) + 1, "a sweep must register exactly one version"
    children = query(
        pg_conn, "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = ("
        " SELECT run_uuid FROM runs WHERE name = 'linear_model-sweep' ORDER BY start_time DESC LIMIT 1)",
    )  # fmt: skip
    child_ids = [c for (c,) in children]
    assert len(child_ids) == 2
    registered_run = after[-1][1]
    assert registered_run in child_ids
    best = min(child_ids, key=lambda run: metric(pg_conn, run, "rmse"))
    assert registered_run == best


def local_predictions(platform: Any, model: str, version: str, frame: pd.DataFrame) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(platform.tracking_uri)
    return np.asarray(mlflow.pyfunc.load_model(f"models:/{model}/{version}").predict(frame))


@pytest.mark.parametrize("model", MODELS)
def test_invocations_match_the_champion_loaded_locally(
    trained: dict[str, Trained], local_platform: Any, pg_conn: Any, model: str
) -> None:
    from sklearn import datasets

    loaders = {"linear_model": datasets.load_diabetes, "logistic_model": datasets.load_breast_cancer,
               "random_forest_model": datasets.load_wine}  # fmt: skip
    frame = loaders[model](as_frame=True).data.astype("float64").iloc[:7]
    champion = alias_version(pg_conn, model)
    assert champion
    base = local_platform.serving_url
    # The default model answers at /invocations; every model holding the alias at /models/<name>.
    url = base if model == "linear_model" else f"{base}/models/{model}"
    wait_until_served(f"{url}/invocations", champion, split_payload(frame))
    expected = local_predictions(local_platform, model, champion, frame)
    payloads = {
        "dataframe_split": split_payload(frame),
        "inputs": {"inputs": frame.to_dict(orient="list")},
    }
    for kind, payload in payloads.items():
        response = requests.post(f"{url}/invocations", json=payload, timeout=30)
        assert response.status_code == 200, f"{kind}: {response.status_code} {response.text}"
        assert response.headers.get("x-model-version") == champion
        served = np.asarray(response.json()["predictions"])
        np.testing.assert_allclose(served, expected, rtol=1e-9, err_msg=kind)


def test_bad_params_create_no_run(local_platform: Any, pg_conn: Any) -> None:
    count = "SELECT count(*) FROM runs"
    before = query(pg_conn, count)[0][0]
    result = train(local_platform, "logistic_model", "--set", "C=-1")
    assert result.returncode == 2
    assert "key 'C'" in result.stderr
    assert query(pg_conn, count)[0][0] == before


def test_a_trainer_that_loses_the_race_to_create_its_experiment_logs_into_it(
    local_platform: Any, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trainers started together on a new experiment race to create it. The interleaving that
    CI once hit is forced here (an injected fault, against the real server): our lookup finds
    nothing, another client creates the experiment, our create is refused. MLflow's own
    `set_experiment` then leaves Default active; the runner's must not."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from mlstack.tracking import use_experiment

    name = "lost-the-race"
    lookup = TrackingServiceClient.get_experiment_by_name

    def lookup_then_lose(self: Any, experiment_name: str) -> Any:
        monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", lookup)
        MlflowClient(local_platform.tracking_uri).create_experiment(experiment_name)
        return None

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", lookup_then_lose)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_platform.tracking_uri)
    experiment = use_experiment(mlflow, name)
    with mlflow.start_run(run_name="the-loser"):
        pass

    assert [row[1] for row in runs_of(pg_conn, name)] == ["the-loser"]
    in_default = query(pg_conn, "SELECT 1 FROM runs WHERE name = 'the-loser' AND experiment_id = 0")
    assert not in_default, "the run landed in the Default experiment"
    assert query(pg_conn, "SELECT name FROM experiments WHERE experiment_id = %s",
                 int(experiment.experiment_id)) == [(name,)]  # fmt: skip


def test_a_fit_that_fails_marks_its_run_failed_and_registers_nothing(
    local_platform: Any, pg_conn: Any, tmp_path: Path
) -> None:
    """A user's own trainer whose estimator raises while fitting (in the fitting process): exit 1,
    the error as the user would want it, the run FAILED in PostgreSQL, no model version."""
    params = json.loads((ROOT / "logistic_model" / "params.json").read_text())
    params |= {"registered_model_name": "refusing_model", "experiment": "refusing_experiment"}
    (tmp_path / "params.json").write_text(json.dumps(params))
    script = tmp_path / "train.py"
    script.write_text(
        "from pathlib import Path\n"
        "from mlstack.params import LogisticParams\n"
        "from mlstack.runner import main\n\n\n"
        "class Refuses:\n"
        "    def fit(self, X, y):\n"
        "        raise ValueError('cannot fit: the data are too perfect')\n\n\n"
        "raise SystemExit(main(Path(__file__).parent, LogisticParams, lambda p: Refuses()))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        env={**trainer_env(local_platform), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: training failed: ValueError: cannot fit: the data are too perfect" in (
        result.stderr
    )
    ((run_id, _, status),) = runs_of(pg_conn, "refusing_experiment")
    assert status == "FAILED"
    assert f"run {run_id} was marked FAILED" in result.stderr
    assert versions_of(pg_conn, "refusing_model") == []


def test_a_user_csv_trains(local_platform: Any, pg_conn: Any, tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    frame.to_csv(tmp_path / "patients.csv", index=False)
    params = json.loads((ROOT / "linear_model" / "params.json").read_text())
    params |= {"registered_model_name": "csv_model", "experiment": "csv_experiment",
               "data": {"path": "patients.csv", "target": "progression"}}  # fmt: skip
    (tmp_path / "params.json").write_text(json.dumps(params))
    result = train(local_platform, "linear_model", "--params", str(tmp_path / "params.json"))
    assert result.returncode == 0, result.stderr
    run_id = runs_of(pg_conn, "csv_experiment")[-1][0]
    assert tag(pg_conn, run_id, "mlstack.dataset.name") == "patients"
    assert tag(pg_conn, run_id, "mlstack.dataset.source") == str(
        (tmp_path / "patients.csv").resolve()
    )
    assert alias_version(pg_conn, "csv_model") == "1"


def test_runs_models_and_serving_survive_down_and_up(
    trained: dict[str, Trained], local_platform: Any
) -> None:
    import psycopg2

    def snapshot() -> tuple[Any, ...]:
        conn = psycopg2.connect(local_platform.pg_uri)
        try:
            runs = query(conn, "SELECT run_uuid, status FROM runs ORDER BY run_uuid")
            aliases = query(
                conn, "SELECT name, alias, version FROM registered_model_aliases ORDER BY name"
            )
            return runs, aliases
        finally:
            conn.close()

    before = snapshot()
    local_platform.down()
    local_platform.up()
    assert snapshot() == before
    champion = str({name: v for name, _, v in before[1]}["linear_model"])
    columns = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    row = pd.DataFrame([[0.01] * 10], columns=columns)
    url = f"{local_platform.serving_url}/invocations"
    wait_until_served(url, champion, split_payload(row))
    response = requests.post(url, json=split_payload(row), timeout=30)
    assert response.status_code == 200
    expected = local_predictions(local_platform, "linear_model", champion, row)
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-9)
