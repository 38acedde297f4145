"""The Docker tier: the real docker-compose.yml, run the way a user runs it.

`docker compose up -d --build --wait`, every trainer through `docker compose run --rm`, then the
outcome checked through independent clients: the rows in PostgreSQL (psql in the postgres
container), the objects in the bucket (boto3 in the mlflow container, the only one with S3
credentials), the predictions over HTTP on the published port, and the Docker SDK for health.
Then `down` + `up` (the data must survive), a bad param (exit 2), and always `down -v` at the end.

No container registry is reachable on these machines, so by default the stack runs with
tests/e2e/compose.offline.yml (local stand-ins built by tests/e2e/build-offline-images.sh,
host-network builds). MLSTACK_E2E_ONLINE=1 runs docker-compose.yml alone, pulling upstream images;
deciding by probing a registry would send traffic where none may go here.

The project is `mlstack-e2e` (MLSTACK_E2E_PROJECT) on free host ports, so it runs beside a
user's own `mlstack` stack; its images are tagged per project and reused by the next run.
Timings (build, up to healthy) are printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
OFFLINE_OVERRIDE = "tests/e2e/compose.offline.yml"
ONLINE = os.environ.get("MLSTACK_E2E_ONLINE", "").lower() in ("1", "true", "yes")
PROJECT = os.environ.get("MLSTACK_E2E_PROJECT", "mlstack-e2e")

MODELS = ("linear_model", "logistic_model", "random_forest_model")
LONG_RUNNING = ("postgres", "minio", "mlflow", "serving")
ONE_SHOT = ("create-bucket",)
PG_USER = PG_DB = "mlflow"  # docker.env

BUILD_TIMEOUT = 25 * 60  # a cold build on 2 busy cores
UP_WAIT_SECONDS = 600
TRAIN_TIMEOUT = 300
SERVING_PICKUP_SECONDS = 90  # serving polls the registry every 5 s; loading takes a few more

# Interpolation variables a developer's shell might carry into the stack; the test sets its own.
FOREIGN_VARS = (
    "COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "SERVE_MODEL", "SERVE_ALIAS",
    "SERVE_MODEL_URI", "MLFLOW_BUCKET", "MLFLOW_ALLOWED_HOSTS", "POSTGRES_IMAGE", "MINIO_IMAGE",
    "PYTHON_IMAGE", "MLFLOW_TRACKING_URI",
)  # fmt: skip

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """One compose project: the user's commands plus `-p` and the offline `-f`."""

    project: str
    files: list[str]
    env: dict[str, str]
    mlflow_port: int
    serving_port: int
    console_port: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for f in self.files for arg in ("-f", f)]
        command = ["docker", "compose", "-p", self.project, *files, *args]
        result = subprocess.run(
            command,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` exited {result.returncode}\n--- stdout\n"
                f"{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}",
                pytrace=False,
            )
        return result

    def script(
        self, name: str, *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """A scripts/*.sh, pointed at this project the documented way (COMPOSE_FILE)."""
        env = {
            **self.env,
            "COMPOSE_FILE": ":".join(self.files),
            "COMPOSE_PROJECT_NAME": self.project,
        }
        return subprocess.run(
            [str(REPO / "scripts" / name), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def psql(self, sql: str) -> list[list[str]]:
        """Rows from PostgreSQL itself, through psql in the postgres container."""
        out = self.compose(
            "exec", "-T", "postgres", "psql", "-U", PG_USER, "-d", PG_DB, "-AtF", "\t", "-c", sql
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def bucket_keys(self, prefix: str = "") -> list[str]:
        """Object keys in the artifact bucket, listed with boto3 inside the mlflow container
        (the one service that holds S3 credentials)."""
        code = (
            "import json, os, sys\n"
            "from mlstack.storage import s3_client\n"
            "client = s3_client(os.environ['MLFLOW_S3_ENDPOINT_URL'])\n"
            "keys = []\n"
            "for page in client.get_paginator('list_objects_v2').paginate("
            "Bucket='mlflow', Prefix=sys.argv[1]):\n"
            "    keys += [o['Key'] for o in page.get('Contents', [])]\n"
            "print(json.dumps(keys))\n"
        )
        out = self.compose("exec", "-T", "mlflow", "python", "-c", code, prefix).stdout
        return json.loads(out.strip().splitlines()[-1])

    def diagnostics(self) -> str:
        ps = self.compose("ps", "--all", check=False)
        logs = self.compose("logs", "--no-color", "--tail", "150", check=False)
        return (
            f"--- docker compose ps\n{ps.stdout}{ps.stderr}\n--- logs\n{logs.stdout}{logs.stderr}"
        )


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's capture (timings and diagnostics belong in the output even with -q)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[docker tier] {line}", file=sys.stderr, flush=True)


def require_engine() -> None:
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed: the Docker tier needs an engine and Compose v2 "
                f"(tests/e2e/docker-engine.sh install && start)\n{result.stderr}",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The platform up and healthy, as `docker compose up -d --build --wait` leaves it.
    Torn down with `down -v` whatever happens; on any failure, ps and logs are printed first."""
    require_engine()
    files = ["docker-compose.yml"]
    if not ONLINE:
        subprocess.run(
            [str(REPO / "tests/e2e/build-offline-images.sh")], cwd=REPO, check=True, timeout=1800
        )
        files.append(OFFLINE_OVERRIDE)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARS}
    ports = {"mlflow": free_port(), "serving": free_port(), "console": free_port()}
    env.update(
        TELEMETRY_OFF,
        MLFLOW_BIND=f"127.0.0.1:{ports['mlflow']}",
        SERVING_BIND=f"127.0.0.1:{ports['serving']}",
        MINIO_CONSOLE_BIND=f"127.0.0.1:{ports['console']}",
        MLFLOW_UI_URL=f"http://localhost:{ports['mlflow']}",
    )
    stack = Stack(PROJECT, files, env, ports["mlflow"], ports["serving"], ports["console"])
    stack.compose("--profile", "train", "down", "--volumes", "--remove-orphans", timeout=180)
    failed_before = request.session.testsfailed
    try:
        started = time.monotonic()
        stack.compose("--profile", "train", "build", timeout=BUILD_TIMEOUT)
        stack.timings["build (all five images)"] = time.monotonic() - started
        started = time.monotonic()
        stack.compose(
            "up", "-d", "--build", "--wait", "--wait-timeout", str(UP_WAIT_SECONDS),
            timeout=UP_WAIT_SECONDS + 300,
        )  # fmt: skip
        stack.timings["up to all healthy"] = time.monotonic() - started
        yield stack
    except BaseException:
        say(request, stack.diagnostics())
        raise
    finally:
        if request.session.testsfailed > failed_before:
            say(request, stack.diagnostics())
        stack.compose("--profile", "train", "down", "--volumes", "--remove-orphans", check=False)
        times = ", ".join(f"{k} {v:.0f} s" for k, v in stack.timings.items())
        say(request, f"timings: {times}")


def train(stack: Stack, model: str, *args: str) -> subprocess.CompletedProcess[str]:
    return stack.compose(
        "run", "--rm", f"{model}_trainer", *args, timeout=TRAIN_TIMEOUT, check=False
    )


def assert_trained(result: subprocess.CompletedProcess[str], stack: Stack) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "=== training summary ===" in result.stdout
    # The summary's link is the user's UI address, not the containers' http://mlflow:5000.
    assert f"UI:         http://localhost:{stack.mlflow_port}/#/experiments/" in result.stdout


def champion_versions(stack: Stack) -> dict[str, str]:
    rows = stack.psql("SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'")
    return {name: version for name, version in rows}


def diabetes_payload() -> dict[str, Any]:
    from sklearn.datasets import load_diabetes

    rows = load_diabetes(as_frame=True).data.head(3)
    return {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}


def invoke(stack: Stack, payload: dict[str, Any], path: str = "/invocations") -> requests.Response:
    return requests.post(stack.serving_url + path, json=payload, timeout=30)


def wait_for_version(stack: Stack, version: str, path: str = "/invocations") -> requests.Response:
    """POST until serving answers with `version` (it polls the registry; no restart)."""
    deadline = time.monotonic() + SERVING_PICKUP_SECONDS
    payload = diabetes_payload()
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = invoke(stack, payload, path)
            if last.status_code == 200 and last.headers.get("X-Model-Version") == version:
                return last
        except requests.RequestException as error:
            last = error
        time.sleep(2)
    detail = (
        last
        if not isinstance(last, requests.Response)
        else (last.status_code, last.headers, last.text)
    )
    pytest.fail(f"serving never answered with version {version}: {detail}", pytrace=False)


# --- up ----------------------------------------------------------------------------------------


def test_every_service_healthy(stack: Stack) -> None:
    import docker

    lines = stack.compose("ps", "--all", "--format", "json").stdout.strip().splitlines()
    # Compose 2.21+ prints one JSON object per line; older ones one array.
    entries = [
        e
        for line in lines
        for e in (json.loads(line) if line.startswith("[") else [json.loads(line)])
    ]
    state = {e["Service"]: (e["State"], e.get("Health", ""), e.get("ExitCode")) for e in entries}
    for service in LONG_RUNNING:
        assert state.get(service, ("missing",))[:2] == ("running", "healthy"), state
    for service in ONE_SHOT:
        assert state.get(service) == ("exited", "", 0), state

    # The same through the Docker SDK, plus the published ports: only the three, on loopback.
    client = docker.from_env()
    containers = client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
    )
    by_service = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert set(by_service) == set(LONG_RUNNING + ONE_SHOT)
    published: dict[str, str] = {}
    for service, container in by_service.items():
        container.reload()
        if service in LONG_RUNNING:
            assert container.attrs["State"]["Health"]["Status"] == "healthy", service
        assert container.attrs["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"], service
        for port, bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                published[f"{service}:{port}"] = f"{binding['HostIp']}:{binding['HostPort']}"
    assert published == {
        "mlflow:5000/tcp": f"127.0.0.1:{stack.mlflow_port}",
        "serving:5001/tcp": f"127.0.0.1:{stack.serving_port}",
        "minio:9001/tcp": f"127.0.0.1:{stack.console_port}",
    }
    # S3 credentials live in the tracking server (and the bucket init) only.
    serving_env = {e.split("=", 1)[0] for e in by_service["serving"].attrs["Config"]["Env"]}
    assert not serving_env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}


def test_health_check_script_agrees(stack: Stack) -> None:
    result = stack.script("health-check.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    for service in LONG_RUNNING + ONE_SHOT:
        assert re.search(rf"^{service}\s+\S+\s+\S+\s+ok$", result.stdout, re.M), result.stdout


def test_serving_is_up_before_any_model(stack: Stack) -> None:
    assert requests.get(stack.serving_url + "/health", timeout=10).status_code == 200
    answer = invoke(stack, diabetes_payload())
    assert answer.status_code == 503, answer.text
    assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_ui_is_served(stack: Stack) -> None:
    page = requests.get(stack.mlflow_url + "/", timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<html" in page.text.lower()


# --- train ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_trainer_runs(stack: Stack, model: str) -> None:
    assert_trained(train(stack, model), stack)


def test_trainer_explicit_command_form(stack: Stack) -> None:
    assert_trained(train(stack, "linear_model", "python", "linear_model/train.py"), stack)


def test_trainers_hold_no_credentials(stack: Stack) -> None:
    result = train(stack, "linear_model", "env")  # a first word that is no option: a command
    assert result.returncode == 0, result.stderr
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert "MLFLOW_TRACKING_URI" in names
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}


def test_trainer_passes_overrides_through(stack: Stack) -> None:
    result = train(stack, "linear_model", "--set", "alpha=0.5")
    assert_trained(result, stack)
    run_id = re.search(r"^run:\s+(\w+)", result.stdout, re.M).group(1)
    assert stack.psql(
        f"SELECT value FROM params WHERE run_uuid = '{run_id}' AND key = 'alpha'"
    ) == [["0.5"]]


def test_bad_param_exits_2_naming_the_key(stack: Stack) -> None:
    runs_before = stack.psql("SELECT count(*) FROM runs")
    result = train(stack, "linear_model", "--set", "alpha=-1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "alpha" in result.stderr, result.stderr
    assert stack.psql("SELECT count(*) FROM runs") == runs_before  # no run was created


# --- outcomes, through independent clients ----------------------------------------------------


def test_runs_are_in_postgres(stack: Stack) -> None:
    rows = stack.psql(
        "SELECT e.name, count(*) FROM runs r JOIN experiments e USING (experiment_id) "
        "WHERE r.status = 'FINISHED' AND r.lifecycle_stage = 'active' GROUP BY e.name"
    )
    finished = {name: int(count) for name, count in rows}
    assert finished.get("linear_model", 0) >= 3, finished  # default, explicit form, alpha=0.5
    assert finished.get("logistic_model", 0) >= 1, finished
    assert finished.get("random_forest_model", 0) >= 1, finished


def test_champions_are_in_the_registry(stack: Stack) -> None:
    assert set(champion_versions(stack)) == set(MODELS)


def test_artifacts_are_in_the_bucket(stack: Stack) -> None:
    keys = stack.bucket_keys("artifacts/")
    assert any("/plots/" in key for key in keys), keys[:20]
    # Each champion's model files, where the registry says they are (proxied artifacts:
    # mlflow-artifacts:/<path> is s3://mlflow/artifacts/<path>).
    rows = stack.psql(
        "SELECT v.name, v.storage_location FROM model_versions v JOIN registered_model_aliases a "
        "ON a.name = v.name AND a.version = v.version WHERE a.alias = 'champion'"
    )
    assert len(rows) == len(MODELS)
    for name, location in rows:
        assert location.startswith("mlflow-artifacts:/"), location
        prefix = "artifacts/" + location.removeprefix("mlflow-artifacts:").strip("/") + "/"
        files = {key.removeprefix(prefix) for key in keys if key.startswith(prefix)}
        assert "MLmodel" in files, (name, prefix, sorted(files))


def test_serving_answers_with_the_champion(stack: Stack) -> None:
    version = champion_versions(stack)["linear_model"]
    answer = wait_for_version(stack, version)
    assert answer.headers["X-Model-Name"] == "linear_model"
    served = answer.json()["predictions"]
    # The same model loaded independently from the registry, through the published UI port.
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        "payload = json.loads(sys.argv[2])['dataframe_split']\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "frame = pd.DataFrame(payload['data'], columns=payload['columns'])\n"
        "print(json.dumps([float(x) for x in model.predict(frame)]))\n"
    )
    local = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            f"models:/linear_model/{version}",
            json.dumps(diabetes_payload()),
        ],
        env={
            **os.environ,
            **TELEMETRY_OFF,
            "MLFLOW_TRACKING_URI": stack.mlflow_url,
            # Else MLflow 3.17 hands out presigned URLs on http://minio:9000, unknown to the host.
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    expected = json.loads(local.stdout.strip().splitlines()[-1])
    assert served == pytest.approx(expected, rel=1e-9)


def test_other_champions_answer_by_name(stack: Stack) -> None:
    import sklearn.datasets

    for model in ("logistic_model", "random_forest_model"):
        dataset = json.loads((REPO / model / "params.json").read_text())["data"]["dataset"]
        rows = getattr(sklearn.datasets, f"load_{dataset}")(as_frame=True).data.head(2)
        payload = {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}
        version = champion_versions(stack)[model]
        deadline = time.monotonic() + SERVING_PICKUP_SECONDS
        while True:
            answer = invoke(stack, payload, f"/models/{model}/invocations")
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == version
        assert len(answer.json()["predictions"]) == 2


def test_serve_model_script_pins_a_version_and_back(stack: Stack) -> None:
    champion = champion_versions(stack)["linear_model"]
    other = "2" if champion != "2" else "1"
    result = stack.script("serve-model.sh", "linear_model", other)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for_version(stack, other)
    result = stack.script("serve-model.sh", "linear_model")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for_version(stack, champion_versions(stack)["linear_model"])


# --- restart: the volumes keep everything ------------------------------------------------------


def test_everything_survives_down_and_up(stack: Stack) -> None:
    runs = stack.psql("SELECT run_uuid, status FROM runs ORDER BY run_uuid")
    champions = champion_versions(stack)
    keys = stack.bucket_keys("artifacts/")

    stack.compose("down", timeout=180)
    started = time.monotonic()
    stack.compose(
        "up", "-d", "--wait", "--wait-timeout", str(UP_WAIT_SECONDS), timeout=UP_WAIT_SECONDS + 120
    )
    stack.timings["second up (warm) to all healthy"] = time.monotonic() - started
    # The init ran again and left the bucket alone (HEAD first).
    assert "bucket 'mlflow' already exists" in stack.compose("logs", "create-bucket").stdout

    assert stack.psql("SELECT run_uuid, status FROM runs ORDER BY run_uuid") == runs
    assert champion_versions(stack) == champions
    assert set(stack.bucket_keys("artifacts/")) == set(keys)
    wait_for_version(stack, champions["linear_model"])
