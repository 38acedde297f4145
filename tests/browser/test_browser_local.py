"""The browser tier on the local platform: the MLflow UI in headless Chromium after the trainers ran.

The three trainers run as users run them (`python <model>/train.py`, only the tracking URI in the
environment), logistic_model twice so its registered model has two versions. Then one browser
opens the UI the way a user does and every page is held to tests/browser_helpers.py's rules (no
failed request, no foreign host, no console error beyond the commented allow-list). What the UI
shows is compared with independent clients: MlflowClient (REST), SQL in PostgreSQL, boto3 on the
bucket. The compose twin of this module is tests/e2e/test_browser_compose.py.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from browser_helpers import (
    Browser,
    TrainedRun,
    browser_session,
    check_artifact_plot,
    check_compare_runs,
    check_experiments_list,
    check_registry_champion,
    check_run_page,
    check_training_view,
    check_ui_telemetry_off,
    trained_runs,
)
from trainer_helpers import MODELS, train

from mlstack.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

pytestmark = pytest.mark.browser

PLOT = "plots/roc_curve.png"  # logistic_model's ROC curve
SHOWN_PARAMS = ("C", "solver", "max_iter", "data.dataset")


def say(line: str) -> None:
    print(f"\n[browser tier] {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def runs(local_platform: Any) -> dict[str, list[TrainedRun]]:
    """Every trainer once, then logistic_model again with other params (a second version)."""
    for model, args in [(m, ()) for m in MODELS] + [("logistic_model", ("--set", "C=0.01"))]:
        result = train(local_platform, model, *args)
        assert result.returncode == 0, f"{model} exited {result.returncode}\n{result.stderr}"
    return trained_runs(local_platform.tracking_uri, MODELS)


@pytest.fixture(scope="module")
def browser(
    runs: dict[str, list[TrainedRun]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    with browser_session(tmp_path_factory.mktemp("browser-local"), say) as session:
        yield session


def query(pg_conn: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with pg_conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def test_trainers_tag_their_experiments_as_model_training(
    runs: dict[str, list[TrainedRun]],
) -> None:
    # Read before any browser opened the UI: the tag is the trainers' doing.
    kinds = {
        model: found[0].experiment_tags.get(EXPERIMENT_KIND_TAG) for model, found in runs.items()
    }
    assert kinds == dict.fromkeys(MODELS, MODEL_TRAINING_KIND)


def test_ui_telemetry_is_off(local_platform: Any) -> None:
    check_ui_telemetry_off(local_platform.tracking_uri)


def test_experiments_list_shows_the_trainers(browser: Browser, local_platform: Any) -> None:
    check_experiments_list(browser, local_platform.tracking_uri, list(MODELS))


def test_experiment_opens_in_the_training_view(
    browser: Browser, local_platform: Any, runs: dict[str, list[TrainedRun]]
) -> None:
    first = runs["random_forest_model"][0]
    check_training_view(browser, local_platform.tracking_uri, first.experiment_id, first.run_name)


def test_run_page_shows_params_and_metrics(
    browser: Browser, local_platform: Any, runs: dict[str, list[TrainedRun]]
) -> None:
    run = runs["logistic_model"][0]
    params = {key: run.params[key] for key in SHOWN_PARAMS}
    check_run_page(
        browser, local_platform.tracking_uri, run.experiment_id, run.run_id, params, run.metrics
    )


def test_artifacts_tab_shows_a_plot_through_the_proxy(
    browser: Browser, local_platform: Any, runs: dict[str, list[TrainedRun]]
) -> None:
    run = runs["logistic_model"][0]
    s3 = local_platform.s3()
    prefix = f"{local_platform.env['MLSTACK_ARTIFACTS_PREFIX']}/{run.experiment_id}/{run.run_id}/"
    listed = s3.list_objects_v2(Bucket=local_platform.bucket, Prefix=prefix).get("Contents", [])
    keys = [item["Key"] for item in listed if item["Key"].endswith(f"/{PLOT}")]
    assert len(keys) == 1, f"{PLOT} in the bucket under {prefix}: {keys}"
    body = s3.get_object(Bucket=local_platform.bucket, Key=keys[0])["Body"].read()
    check_artifact_plot(
        browser,
        local_platform.tracking_uri,
        run.experiment_id,
        run.run_id,
        PLOT,
        hashlib.sha256(body).hexdigest(),
    )


def test_registry_page_shows_the_champion_on_its_version(
    browser: Browser, local_platform: Any, pg_conn: Any
) -> None:
    name = "logistic_model"
    versions = [str(v) for (v,) in query(pg_conn, "SELECT version FROM model_versions WHERE name = %s ORDER BY version", name)]  # fmt: skip
    holders = query(
        pg_conn,
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'",
        name,
    )
    assert len(versions) == 2 and len(holders) == 1, (versions, holders)
    check_registry_champion(
        browser, local_platform.tracking_uri, name, versions, str(holders[0][0])
    )


def test_compare_view_of_two_runs_renders(
    browser: Browser, local_platform: Any, runs: dict[str, list[TrainedRun]]
) -> None:
    first, second = runs["logistic_model"][:2]
    check_compare_runs(
        browser,
        local_platform.tracking_uri,
        {first.run_id: first.run_name, second.run_id: second.run_name},
        [first.experiment_id],
    )
