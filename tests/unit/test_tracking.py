"""The retry-window arithmetic and the failure messages users read when a run fails."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

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


class _CutsOffTheFirstAnswer:
    """An HTTP server on a loopback socket that sends the first request's headers and closes the
    connection before the body, as a tracking server killed mid-answer does; later requests get
    `{}`. It keeps each request's body."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.bodies: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection, connection.makefile("rb") as stream:
                headers = {}
                stream.readline()
                while (line := stream.readline().strip()) != b"":
                    name, _, value = line.decode().partition(":")
                    headers[name.lower()] = value.strip()
                self.bodies.append(stream.read(int(headers.get("content-length", 0))))
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                if len(self.bodies) == 1:
                    connection.sendall(head + b"Connection: close\r\n\r\n")
                else:
                    connection.sendall(head + b"Connection: close\r\n\r\n{}")
                connection.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cut_off_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CutsOffTheFirstAnswer]:
    from mlflow.utils import rest_utils

    # the patch is for the whole process (another test may have run a trainer in this one): each
    # test starts from MLflow's own function and leaves it as it found it
    send = rest_utils._get_http_response_with_retries
    monkeypatch.setattr(
        rest_utils, "_get_http_response_with_retries", getattr(send, "__wrapped__", send)
    )
    server = _CutsOffTheFirstAnswer()
    yield server
    server.close()


def _post(url: str, max_retries: int) -> requests.Response:
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    return http_request(
        MlflowHostCreds(url), "/api/2.0/mlflow/runs/log-batch", "POST",
        max_retries=max_retries, backoff_factor=1, timeout=10, json={"run_id": "r"},
    )  # fmt: skip


def test_mlflow_alone_fails_at_once_on_an_answer_cut_off_after_its_headers(
    cut_off_server: _CutsOffTheFirstAnswer,
) -> None:
    """Why retry_cut_off_answers exists: MLflow's own retries do not cover this."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="IncompleteRead") as failed:
        _post(cut_off_server.url, max_retries=3)
    assert len(cut_off_server.bodies) == 1
    assert tracking.describe_run_failure(failed.value, cut_off_server.url).startswith(
        "lost the tracking server"
    )


def test_a_cut_off_answer_is_sent_again(cut_off_server: _CutsOffTheFirstAnswer) -> None:
    tracking.retry_cut_off_answers()
    tracking.retry_cut_off_answers()  # once per process, however often it is called
    response = _post(cut_off_server.url, max_retries=3)
    assert response.json() == {}
    assert [json.loads(body) for body in cut_off_server.bodies] == [{"run_id": "r"}] * 2


def test_a_retried_upload_sends_the_whole_file_again(
    cut_off_server: _CutsOffTheFirstAnswer, tmp_path: Path
) -> None:
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    tracking.retry_cut_off_answers()
    artifact = tmp_path / "roc.png"
    artifact.write_bytes(bytes(range(256)) * 64)
    with artifact.open("rb") as body:
        response = http_request(
            MlflowHostCreds(cut_off_server.url),
            "/api/2.0/mlflow-artifacts/artifacts/1/roc.png", "PUT",
            max_retries=3, backoff_factor=1, timeout=10, data=body,
        )  # fmt: skip
    assert response.status_code == 200
    assert cut_off_server.bodies == [artifact.read_bytes()] * 2


def test_with_retries_stopped_a_cut_off_answer_fails_the_run(
    cut_off_server: _CutsOffTheFirstAnswer,
) -> None:
    from mlflow.exceptions import MlflowException

    tracking.retry_cut_off_answers()
    with pytest.raises(MlflowException, match="IncompleteRead"):
        _post(cut_off_server.url, max_retries=0)
    assert len(cut_off_server.bodies) == 1
