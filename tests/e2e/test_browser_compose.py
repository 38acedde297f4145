"""The browser tier on the compose stack: the MLflow UI on its published port, as a user opens it
(http://localhost:PORT, the address the trainers print), after `docker compose run --rm` of each
trainer; and the MinIO console's login page on its published port.

The same checks as tests/browser/test_browser_local.py (tests/browser_helpers.py), compared with
independent clients: MlflowClient on the published port, psql in the postgres container, boto3 in
the mlflow container (the only one holding S3 credentials). Project `mlstack-e2e-browser`, so it
runs beside the other compose modules and a user's own stack.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

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

from mlstack.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.browser

COMPOSE_PROJECT = "mlstack-e2e-browser"
MODELS = ("linear_model", "logistic_model", "random_forest_model")
PLOT = "plots/roc_curve.png"
SHOWN_PARAMS = ("C", "solver", "max_iter", "data.dataset")


def say(line: str) -> None:
    print(f"\n[browser tier] {line}", file=sys.stderr, flush=True)


def ui(stack: Stack) -> str:
    return f"http://localhost:{stack.mlflow_port}"


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, list[TrainedRun]]:
    for model in MODELS:
        stack.assert_trained(stack.train(model))
    return trained_runs(stack.mlflow_url, MODELS)


@pytest.fixture(scope="module")
def browser(
    runs: dict[str, list[TrainedRun]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    with browser_session(tmp_path_factory.mktemp("browser-compose"), say) as session:
        yield session


def test_trainers_tag_their_experiments_as_model_training(
    runs: dict[str, list[TrainedRun]],
) -> None:
    kinds = {
        model: found[0].experiment_tags.get(EXPERIMENT_KIND_TAG) for model, found in runs.items()
    }
    assert kinds == dict.fromkeys(MODELS, MODEL_TRAINING_KIND)


def test_ui_telemetry_is_off(stack: Stack) -> None:
    check_ui_telemetry_off(ui(stack))


def test_experiments_list_shows_the_trainers(browser: Browser, stack: Stack) -> None:
    check_experiments_list(browser, ui(stack), list(MODELS))


def test_experiment_opens_in_the_training_view(
    browser: Browser, stack: Stack, runs: dict[str, list[TrainedRun]]
) -> None:
    first = runs["random_forest_model"][0]
    check_training_view(browser, ui(stack), first.experiment_id, first.run_name)


def test_run_page_shows_params_and_metrics(
    browser: Browser, stack: Stack, runs: dict[str, list[TrainedRun]]
) -> None:
    run = runs["logistic_model"][0]
    params = {key: run.params[key] for key in SHOWN_PARAMS}
    check_run_page(browser, ui(stack), run.experiment_id, run.run_id, params, run.metrics)


def test_artifacts_tab_shows_a_plot_through_the_proxy(
    browser: Browser, stack: Stack, runs: dict[str, list[TrainedRun]]
) -> None:
    run = runs["logistic_model"][0]
    # docker-compose.yml: --artifacts-destination s3://mlflow/artifacts
    objects = stack.bucket_objects(f"artifacts/{run.experiment_id}/{run.run_id}/")
    digests = [digest for key, digest in objects.items() if key.endswith(f"/{PLOT}")]
    assert len(digests) == 1, f"{PLOT} of run {run.run_id} in the bucket: {sorted(objects)}"
    check_artifact_plot(browser, ui(stack), run.experiment_id, run.run_id, PLOT, digests[0])


def test_registry_page_shows_the_champion_on_its_version(browser: Browser, stack: Stack) -> None:
    name = "logistic_model"
    versions = [row[0] for row in stack.psql(f"SELECT version FROM model_versions WHERE name = '{name}' ORDER BY version")]  # fmt: skip
    champion = stack.champion_versions()[name]
    check_registry_champion(browser, ui(stack), name, versions, champion)


def test_compare_view_of_two_runs_renders(
    browser: Browser, stack: Stack, runs: dict[str, list[TrainedRun]]
) -> None:
    first, second = runs["logistic_model"][0], runs["random_forest_model"][0]
    check_compare_runs(
        browser,
        ui(stack),
        {first.run_id: first.run_name, second.run_id: second.run_name},
        [first.experiment_id, second.experiment_id],
    )


def test_minio_console_login_page_loads(browser: Browser, stack: Stack) -> None:
    """The console a user opens on the published port: a login form with a password field (both
    MinIO's console and the offline stand-in's SeaweedFS admin UI show one)."""
    from selenium.webdriver.common.by import By

    url = f"http://localhost:{stack.console_port}/"
    with browser.page("object store console", url):
        browser.wait_for(
            lambda d: d.find_elements(By.CSS_SELECTOR, "form input[type='password']"),
            "a login form with a password field",
        )
        assert re.search(r"log ?in|sign ?in", browser.text(), re.IGNORECASE), browser.text()
