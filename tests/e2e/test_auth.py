"""The optional authentication mode: docker-compose.yml + docker-compose.auth.yml (MLflow's
basic-auth app), run the way docs/reliability-security.md tells users to.

No credentials → 401, a wrong password → 401, the admin's → 200, on the published API; /health
stays open (healthchecks); the users live in PostgreSQL; a trainer run with `docker compose run
--rm` authenticates with MLFLOW_TRACKING_USERNAME/PASSWORD (and fails clearly with a wrong one);
serving authenticates to the registry, loads the champion and answers /invocations, with a
bearer token from the file mounted as a Compose secret, and 401 without it. The tracking app's own
runs/search shows a user only the experiments it may read.

With the monitoring overlay as well (all three files, as docs/monitoring.md tells users): Prometheus
scrapes every target with the generated scrape token, which logs in as the non-admin user
`mlstack-monitoring` on MLflow and opens serving's /metrics only; without it, or with a wrong one,
/metrics stays 401. (tests/e2e/test_monitoring.py runs the same scrape configuration without auth.)

Its own compose project (`mlstack-e2e-auth`) on free ports, from tests/e2e/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.docker


def docker_env(key: str) -> str:
    """A value from docker.env, the one place the server-side secrets are set."""
    for line in (Path(__file__).resolve().parents[2] / "docker.env").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise KeyError(key)


ADMIN = docker_env("MLFLOW_AUTH_ADMIN_USERNAME")
ADMIN_PASSWORD = docker_env("MLFLOW_AUTH_ADMIN_PASSWORD")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ONLINE = os.environ.get("MLSTACK_E2E_ONLINE", "").lower() in ("1", "true", "yes")
PROMETHEUS_PORT = _free_port()
PROMETHEUS = f"http://127.0.0.1:{PROMETHEUS_PORT}"
# The scrape login's name: monitoring/prometheus/prometheus.yml, mlstack/tracking_app.py.
MONITORING_USER = "mlstack-monitoring"

COMPOSE_PROJECT = "mlstack-e2e-auth"
COMPOSE_OVERLAYS = (
    "docker-compose.auth.yml",
    "docker-compose.monitoring.yml",
    *(() if ONLINE else ("tests/e2e/compose.monitoring.offline.yml",)),
)
# Serving's bearer tokens, as a user writes them (a file, mounted as a Compose secret).
SERVING_TOKEN = secrets.token_urlsafe(32)
_TOKENS_DIR = Path(tempfile.mkdtemp(prefix="mlstack-e2e-auth-"))
(_TOKENS_DIR / "serving-tokens").write_text(f"# e2e\n{SERVING_TOKEN}\n")
(_TOKENS_DIR / "serving-tokens").chmod(0o644)  # readable by the container's user
# What a user puts in .env: the clients' login (here the admin account of docker.env).
STACK_ENV = {
    "MLFLOW_TRACKING_USERNAME": ADMIN,
    "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
    "SERVING_TOKENS_FILE": str(_TOKENS_DIR / "serving-tokens"),
    "PROMETHEUS_BIND": f"127.0.0.1:{PROMETHEUS_PORT}",
    "GRAFANA_BIND": f"127.0.0.1:{_free_port()}",
}

API = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_no_credentials_is_401(stack: Stack) -> None:
    answer = requests.get(stack.mlflow_url + API, timeout=30)
    assert answer.status_code == 401, answer.text
    assert answer.headers.get("WWW-Authenticate", "").lower().startswith("basic")
    assert requests.get(stack.mlflow_url + "/", timeout=30).status_code == 401  # the UI too


def test_wrong_password_is_401(stack: Stack) -> None:
    answer = requests.get(stack.mlflow_url + API, auth=(ADMIN, "not-the-password"), timeout=30)
    assert answer.status_code == 401, answer.text


def test_right_password_is_200(stack: Stack) -> None:
    answer = requests.get(stack.mlflow_url + API, auth=(ADMIN, ADMIN_PASSWORD), timeout=30)
    assert answer.status_code == 200, answer.text
    assert "experiments" in answer.json()


def test_health_stays_open(stack: Stack) -> None:
    # Healthchecks carry no credentials: `up --wait` returned, and /health answers anonymously.
    assert requests.get(stack.mlflow_url + "/health", timeout=10).status_code == 200


def test_users_live_in_postgres(stack: Stack) -> None:
    # The admin of docker.env, and the monitoring overlay's scrape login, never an admin.
    assert sorted(stack.psql("SELECT username, is_admin FROM users")) == sorted(
        [[ADMIN, "t"], [MONITORING_USER, "f"]]
    )
    # Nothing written to a SQLite file in the container (MLflow's default is basic_auth.db).
    found = stack.compose(
        "exec", "-T", "mlflow", "sh", "-c", "find / -xdev -name '*.db' 2>/dev/null; true"
    ).stdout
    assert "basic_auth" not in found, found


def test_clients_hold_only_their_login(stack: Stack) -> None:
    result = stack.train("linear_model", "env")
    assert result.returncode == 0, result.stderr
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}
    assert not names & {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}


def test_trainer_authenticates(stack: Stack) -> None:
    stack.assert_trained(stack.train("linear_model"))
    assert stack.champion_versions().get("linear_model") == "1"


def test_runs_search_shows_a_user_only_what_it_may_read(stack: Stack) -> None:
    """The tracking app's own runs/search (mlstack/runs_search.py) filters experiments by a user's
    permissions as MLflow's handler does: the trainer's runs are there for the admin and for a
    user with the default READ, and gone for that user once denied the experiment."""
    admin = (ADMIN, ADMIN_PASSWORD)
    api = stack.mlflow_url + "/api/2.0/mlflow"
    user, password = f"reader-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    created = requests.post(f"{api}/users/create", json={"username": user, "password": password},
                            auth=admin, timeout=30)  # fmt: skip
    assert created.status_code == 200, created.text
    experiment = requests.get(f"{api}/experiments/get-by-name", auth=admin, timeout=30,
                              params={"experiment_name": "linear_model"})  # fmt: skip
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment"]["experiment_id"]
    page = {"experiment_ids": [experiment_id], "max_results": 100,
            "order_by": ["attributes.start_time DESC"]}  # fmt: skip
    search = stack.mlflow_url + "/ajax-api/2.0/mlflow/runs/search"

    def run_ids(login: tuple[str, str]) -> list[str]:
        answer = requests.post(search, json=page, auth=login, timeout=30)
        assert answer.status_code == 200, answer.text
        assert b"\n" not in answer.content  # compact: our route answered, not MLflow's handler
        return [run["info"]["run_id"] for run in answer.json().get("runs", [])]

    seen = run_ids(admin)
    assert seen, "the trainer's runs (test_trainer_authenticates)"
    assert run_ids((user, password)) == seen  # default_permission = READ
    # MLflow 3.17's per-user grant (its RBAC API); DENY is its "no access" for a resource.
    grant = stack.mlflow_url + "/api/3.0/mlflow/users/permissions/grant"
    denied = requests.post(grant, auth=admin, timeout=30,
                           json={"username": user, "resource_type": "experiment",
                                 "resource_id": experiment_id, "permission": "DENY"})  # fmt: skip
    assert denied.status_code == 200, denied.text
    answer = requests.post(search, json=page, auth=(user, password), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json().get("runs", []) == []
    assert run_ids(admin) == seen


def test_artifact_downloads_need_a_login(stack: Stack) -> None:
    """The streamed download route (mlstack/tracking_app.py) sits behind MLflow's basic auth like
    MLflow's own: the champion's MLmodel is 401 without a login, and with one it streams whole."""
    if "linear_model" not in stack.champion_versions():
        stack.assert_trained(stack.train("linear_model"))
    [[location]] = stack.psql(
        "SELECT storage_location FROM model_versions WHERE name = 'linear_model' AND version = '1'"
    )
    root = location.split(":", 1)[1].lstrip("/")
    url = f"{stack.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/{root}/MLmodel"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, auth=(ADMIN, "not-the-password"), timeout=30).status_code == 401
    answer = requests.get(url, auth=(ADMIN, ADMIN_PASSWORD), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("Content-Length") == str(len(answer.content)), answer.headers
    assert "flavors:" in answer.text


def test_trainer_with_a_wrong_password_fails_clearly(stack: Stack) -> None:
    runs_before = stack.psql("SELECT count(*) FROM runs")
    result = stack.compose(
        "run", "--rm", "-e", "MLFLOW_TRACKING_PASSWORD=not-the-password", "linear_model_trainer",
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "401" in result.stderr and "MLFLOW_TRACKING_PASSWORD" in result.stderr, result.stderr
    assert stack.psql("SELECT count(*) FROM runs") == runs_before


def test_serving_wants_a_bearer_token(stack: Stack) -> None:
    payload = stack.diabetes_payload()
    for headers in ({}, {"Authorization": "Bearer not-the-token-not-the-token"}):
        answer = requests.post(
            stack.serving_url + "/invocations", json=payload, headers=headers, timeout=30
        )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error_code"] == "UNAUTHENTICATED"
        metrics = requests.get(stack.serving_url + "/metrics", headers=headers, timeout=30)
        assert metrics.status_code == 401
    for probe in ("/health", "/ping"):  # open for healthchecks (/ping: 200 or 503, never 401)
        assert requests.get(stack.serving_url + probe, timeout=30).status_code in (200, 503)


def test_serving_authenticates_to_the_registry(stack: Stack) -> None:
    version = stack.champion_versions()["linear_model"]
    stack.serving_token = SERVING_TOKEN
    answer = stack.wait_for_version(version)
    assert answer.headers["X-Model-Name"] == "linear_model"
    assert len(answer.json()["predictions"]) == 3


# --- with the monitoring overlay -----------------------------------------------------------------
def scrape_token(stack: Stack) -> str:
    """The token monitoring-init generated (read where Prometheus reads it)."""
    return stack.compose(
        "exec", "-T", "prometheus", "cat", "/run/mlstack-monitoring/scrape-token"
    ).stdout.strip()


def test_prometheus_scrapes_every_target_with_auth_on(stack: Stack) -> None:
    jobs = {"serving", "mlflow", "postgres", "minio", "prometheus"}
    deadline = time.monotonic() + 150  # scrapes every 15 s; the machine is shared and slow
    while True:
        answer = requests.get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()
        states = {
            t["labels"]["job"]: (t["health"], t.get("lastError", ""))
            for t in answer["data"]["activeTargets"]
        }
        if {job: state[0] for job, state in states.items()} == dict.fromkeys(jobs, "up"):
            break
        assert time.monotonic() < deadline, states
        time.sleep(3)
    # MLflow's per-endpoint series carry the refusals of the tests above (401) beside the rest.
    query = 'sum by (route) (mlstack_tracking_http_request_duration_seconds_count{status="401"})'
    result = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": query}, timeout=30)
    routes = {r["metric"]["route"] for r in result.json()["data"]["result"]}
    assert "/api/2.0/mlflow/experiments/search" in routes, routes


def test_metrics_need_the_scrape_login(stack: Stack) -> None:
    token = scrape_token(stack)
    assert len(token) == 64
    metrics = stack.mlflow_url + "/metrics"
    for auth in (None, (MONITORING_USER, "not-the-token"), (ADMIN, token)):
        assert requests.get(metrics, auth=auth, timeout=30).status_code == 401, auth
    answer = requests.get(metrics, auth=(MONITORING_USER, token), timeout=30)
    assert answer.status_code == 200 and "mlflow_http_request_total" in answer.text
    # The monitoring user is no admin: MLflow's user administration refuses it.
    users = requests.get(
        stack.mlflow_url + "/api/2.0/mlflow/users/get",
        params={"username": ADMIN},
        auth=(MONITORING_USER, token),
        timeout=30,
    )
    assert users.status_code == 403, users.text
    # Serving: the scrape token opens /metrics and nothing else.
    bearer = {"Authorization": f"Bearer {token}"}
    serving_metrics = stack.serving_url + "/metrics"
    assert requests.get(serving_metrics, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert requests.get(serving_metrics, headers=wrong, timeout=30).status_code == 401
    assert requests.get(serving_metrics, headers=bearer, timeout=30).status_code == 200
    scored = requests.post(
        stack.serving_url + "/invocations", json=stack.diabetes_payload(), headers=bearer,
        timeout=30,
    )  # fmt: skip
    assert scored.status_code == 401, scored.text
