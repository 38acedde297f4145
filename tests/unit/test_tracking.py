"""The retry-window arithmetic and the failure messages users read when a run fails."""

from __future__ import annotations

import pytest
import requests

from mlstack import tracking

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("window", "retries"), [(0, 0), (1, 2), (60, 6), (120, 7), (10_000, 10)])
def test_retry_window_rounds_up_to_mlflows_schedule(window: float, retries: int) -> None:
    assert tracking.retries_for_window(window) == retries
    if retries < tracking.MLFLOW_MAX_RETRIES_LIMIT:
        assert sum(tracking.retry_sleeps(retries)) >= window
    if retries:
        assert sum(tracking.retry_sleeps(retries - 1)) < window


def test_configure_keeps_the_users_own_mlflow_settings() -> None:
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
    assert tracking.configure_client_retries(120, env) == (2, 1)
    assert tracking.configure_client_retries(120, {}) == (7, 1)
    tracking.stop_client_retries(env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"


def test_artifact_store_failure_names_the_artifact_and_the_server() -> None:
    url = "http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/1/models/m-1/artifacts/MLmodel"
    exc = Exception(f"API request to {url} failed: too many 500 error responses")
    message = tracking.describe_run_failure(exc, "http://mlflow:5000")
    assert message.startswith("artifact store unavailable")
    assert "mlflow-artifacts:/1/models/m-1/artifacts/MLmodel" in message
    assert "http://mlflow:5000" in message


def test_lost_server_and_other_failures() -> None:
    lost = Exception("request failed")
    lost.__cause__ = requests.ConnectionError("refused")
    assert tracking.describe_run_failure(lost, "http://x:5000").startswith(
        "lost the tracking server at http://x:5000"
    )
    other = tracking.describe_run_failure(ValueError("bad shape"), "http://x:5000")
    assert other == "training failed: ValueError: bad shape"


class _TagRace:
    """An experiment another trainer tags first: our insert then fails as MLflow's SQL store
    fails it (a unique-key violation answered as BAD_REQUEST)."""

    def __init__(self, winners_value: str) -> None:
        self.tags: dict[str, str] = {}
        self.winners_value = winners_value

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.tags[key] = self.winners_value
        raise RuntimeError('duplicate key value violates unique constraint "experiment_tag_pk"')

    def get_experiment(self, experiment_id: str) -> object:
        return type("Experiment", (), {"experiment_id": experiment_id, "tags": self.tags})()


def test_losing_the_race_to_tag_a_new_experiment_is_success() -> None:
    client = _TagRace(tracking.MODEL_TRAINING_KIND)
    tracking.mark_as_model_training(client, client.get_experiment("7"))
    assert client.tags == {tracking.EXPERIMENT_KIND_TAG: tracking.MODEL_TRAINING_KIND}


def test_a_tag_failure_that_left_another_kind_is_raised() -> None:
    client = _TagRace("genai_development")
    with pytest.raises(RuntimeError, match="experiment_tag_pk"):
        tracking.mark_as_model_training(client, client.get_experiment("7"))
