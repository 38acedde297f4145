"""The Docker tier's machinery: one compose project per test module, run the way a user runs it.

The module-scoped `stack` fixture builds the images, runs `docker compose up -d --build --wait`
and yields a `Stack`; it always ends with `down -v`, after printing `docker compose ps` and every
service's log when a test failed. A test module picks its project and overlays with module-level
constants, so modules run side by side with a user's own `mlstack` stack and with each other:

    COMPOSE_PROJECT = "mlstack-e2e-auth"            # default: MLSTACK_E2E_PROJECT or mlstack-e2e
    COMPOSE_OVERLAYS = ("docker-compose.auth.yml",)  # added after docker-compose.yml
    STACK_ENV = {"MLFLOW_TRACKING_USERNAME": "admin", ...}   # more interpolation variables

No container registry is reachable on these machines, so by default the stack runs with
tests/e2e/compose.offline.yml (local stand-ins built by tests/e2e/build-offline-images.sh,
host-network builds). MLSTACK_E2E_ONLINE=1 runs docker-compose.yml alone, pulling upstream images;
deciding by probing a registry would send traffic where none may go here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
OFFLINE_OVERRIDE = "tests/e2e/compose.offline.yml"
ONLINE = os.environ.get("MLSTACK_E2E_ONLINE", "").lower() in ("1", "true", "yes")
DEFAULT_PROJECT = os.environ.get("MLSTACK_E2E_PROJECT", "mlstack-e2e")
# Prefixed to every project name (MLSTACK_E2E_PROJECT_PREFIX=mine-): two checkouts can run the
# Docker tier on one engine at once without taking each other's stacks down.
PROJECT_PREFIX = os.environ.get("MLSTACK_E2E_PROJECT_PREFIX", "")

MODELS = ("linear_model", "logistic_model", "random_forest_model")
LONG_RUNNING = ("postgres", "minio", "mlflow", "serving")
ONE_SHOT = ("config-check", "create-bucket")
PG_USER = PG_DB = "mlflow"  # docker.env

BUILD_TIMEOUT = 25 * 60  # a cold build on 2 busy cores
UP_WAIT_SECONDS = 600
TRAIN_TIMEOUT = 300
SERVING_PICKUP_SECONDS = 90  # serving polls the registry every 5 s; loading takes a few more
# Several serving workers: how long every answer must carry the awaited version (wait_for_version).
WORKERS_AGREE_SECONDS = 10

# Interpolation variables a developer's shell might carry into the stack; the tests set their own.
FOREIGN_VARS = (
    "COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "SERVE_MODEL", "SERVE_ALIAS",
    "SERVE_MODEL_URI", "MLFLOW_BUCKET", "MLFLOW_ALLOWED_HOSTS", "POSTGRES_IMAGE", "MINIO_IMAGE",
    "PYTHON_IMAGE", "MLFLOW_TRACKING_URI", "MLFLOW_BIND", "SERVING_BIND", "MINIO_CONSOLE_BIND",
    "MLFLOW_UI_URL", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "SERVING_TOKENS_FILE", "SERVING_WORKERS", "SERVE_CHALLENGER_ALIAS", "CANARY_WEIGHT",
    "CANARY_STICKY_HEADER", "SHADOW_PERCENT",
)  # fmt: skip

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This process's environment without a developer's compose variables, telemetry off."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARS}
    env.update(TELEMETRY_OFF)
    return env


def compose_files(*overlays: str) -> list[str]:
    """docker-compose.yml, the overlays, and (offline) the stand-in override last."""
    return ["docker-compose.yml", *overlays, *([] if ONLINE else [OFFLINE_OVERRIDE])]


def read_docker_env() -> dict[str, str]:
    """The KEY=VALUE lines of docker.env (the containers' environment)."""
    values: dict[str, str] = {}
    for line in (REPO / "docker.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def diabetes_payload() -> dict[str, Any]:
    from sklearn.datasets import load_diabetes

    rows = load_diabetes(as_frame=True).data.head(3)
    return {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}


def dataset_payload(model: str, rows: int = 2) -> dict[str, Any]:
    """The first rows of the built-in data set `model`'s params.json trains on."""
    import sklearn.datasets

    dataset = json.loads((REPO / model / "params.json").read_text())["data"]["dataset"]
    frame = getattr(sklearn.datasets, f"load_{dataset}")(as_frame=True).data.head(rows)
    return {"dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}}


@dataclass
class Stack:
    """One compose project: the user's commands plus `-p` and the `-f` files."""

    project: str
    files: list[str]
    env: dict[str, str]
    mlflow_port: int
    serving_port: int
    console_port: int
    timings: dict[str, float] = field(default_factory=dict)
    serving_token: str | None = None  # bearer token for serving (auth overlay)

    # For the test modules, which import nothing from this conftest at run time (two conftest.py
    # files outside packages share the module name `conftest`).
    diabetes_payload = staticmethod(diabetes_payload)
    dataset_payload = staticmethod(dataset_payload)
    read_docker_env = staticmethod(read_docker_env)

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
        return self._host_command([str(REPO / "scripts" / name), *args], timeout)

    def mlstack(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`python -m mlstack ARGS` on the host, pointed at this project like `script`."""
        return self._host_command([sys.executable, "-m", "mlstack", *args], timeout)

    def _host_command(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = {
            **self.env,
            "COMPOSE_FILE": ":".join(self.files),
            "COMPOSE_PROJECT_NAME": self.project,
            "PYTHON": sys.executable,  # scripts that run mlstack on the host: this venv's
        }
        return subprocess.run(
            command,
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

    def bucket_objects(self, prefix: str = "") -> dict[str, str]:
        """{key: sha256} of the artifact bucket, read with plain boto3 inside the mlflow container
        (the one service that holds S3 credentials)."""
        code = (
            "import hashlib, json, os, sys\n"
            "import boto3\n"
            "from botocore.config import Config\n"
            "client = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'],"
            " config=Config(s3={'addressing_style': 'path'}))\n"
            "found = {}\n"
            "for page in client.get_paginator('list_objects_v2').paginate("
            "Bucket='mlflow', Prefix=sys.argv[1]):\n"
            "    for item in page.get('Contents', []):\n"
            "        body = client.get_object(Bucket='mlflow', Key=item['Key'])['Body'].read()\n"
            "        found[item['Key']] = hashlib.sha256(body).hexdigest()\n"
            "print(json.dumps(found))\n"
        )
        out = self.compose("exec", "-T", "mlflow", "python", "-c", code, prefix).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    def bucket_object_sha256(self, key: str) -> tuple[int, str]:
        """(size, sha256) of one object, hashed as it streams (boto3 in the mlflow container, as
        `bucket_objects`, without holding the body: for artifacts of hundreds of MB)."""
        code = (
            "import hashlib, json, os, sys\n"
            "import boto3\n"
            "from botocore.config import Config\n"
            "client = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'],"
            " config=Config(s3={'addressing_style': 'path'}))\n"
            "digest, size = hashlib.sha256(), 0\n"
            "for chunk in client.get_object(Bucket='mlflow', Key=sys.argv[1])['Body']"
            ".iter_chunks(1 << 20):\n"
            "    digest.update(chunk)\n"
            "    size += len(chunk)\n"
            "print(json.dumps([size, digest.hexdigest()]))\n"
        )
        out = self.compose("exec", "-T", "mlflow", "python", "-c", code, key, timeout=600).stdout
        size, sha256 = json.loads(out.strip().splitlines()[-1])
        return int(size), str(sha256)

    def bucket_keys(self, prefix: str = "") -> list[str]:
        """Object keys in the artifact bucket (as `bucket_objects`, listing only: no bodies)."""
        code = (
            "import json, os, sys\n"
            "import boto3\n"
            "from botocore.config import Config\n"
            "client = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'],"
            " config=Config(s3={'addressing_style': 'path'}))\n"
            "print(json.dumps([item['Key'] for page in client.get_paginator('list_objects_v2')"
            ".paginate(Bucket='mlflow', Prefix=sys.argv[1]) for item in page.get('Contents', [])]))\n"
        )
        out = self.compose("exec", "-T", "mlflow", "python", "-c", code, prefix).stdout
        return sorted(json.loads(out.strip().splitlines()[-1]))

    def up(self, timing: str, *args: str) -> None:
        """`docker compose up -d --wait ARGS`; the time to all healthy is kept as `timing`."""
        started = time.monotonic()
        self.compose(
            "up", "-d", "--wait", "--wait-timeout", str(UP_WAIT_SECONDS), *args,
            timeout=UP_WAIT_SECONDS + 300,
        )  # fmt: skip
        self.timings[timing] = time.monotonic() - started

    def train(self, model: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`docker compose run --rm <model>_trainer ARGS`, as a user types it."""
        return self.compose(
            "run", "--rm", f"{model}_trainer", *args, timeout=TRAIN_TIMEOUT, check=False
        )

    def assert_trained(self, result: subprocess.CompletedProcess[str]) -> None:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert "=== training summary ===" in result.stdout
        # The summary's link is the user's UI address, not the containers' http://mlflow:5000.
        assert f"UI:         http://localhost:{self.mlflow_port}/#/experiments/" in result.stdout

    def champion_versions(self) -> dict[str, str]:
        rows = self.psql(
            "SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'"
        )
        return {name: version for name, version in rows}

    def invoke(self, payload: dict[str, Any], path: str = "/invocations") -> requests.Response:
        headers = {"Authorization": f"Bearer {self.serving_token}"} if self.serving_token else {}
        return requests.post(self.serving_url + path, json=payload, headers=headers, timeout=30)

    def wait_for_version(
        self, version: str, path: str = "/invocations", payload: dict[str, Any] | None = None
    ) -> requests.Response:
        """POST until serving answers with `version` (it polls the registry; no restart).

        With several serving workers (SERVING_WORKERS), each loads the version after its own
        poll, seconds apart, and a connection may reach either: one matching answer is then not
        enough (CI once got a 503 right after it, from the worker still loading). The version
        must then answer every request for WORKERS_AGREE_SECONDS, on new connections."""
        deadline = time.monotonic() + SERVING_PICKUP_SECONDS
        payload = payload or diabetes_payload()
        several = int(self.env.get("SERVING_WORKERS") or "1") > 1
        last: Any = None
        streak_since: float | None = None
        while time.monotonic() < deadline:
            try:
                last = self.invoke(payload, path)
                if last.status_code == 200 and last.headers.get("X-Model-Version") == version:
                    now = time.monotonic()
                    streak_since = streak_since if streak_since is not None else now
                    if not several or now - streak_since >= WORKERS_AGREE_SECONDS:
                        return last
                    time.sleep(0.25)
                    continue
            except requests.RequestException as error:
                last = error
            streak_since = None
            time.sleep(2)
        detail = (
            last
            if not isinstance(last, requests.Response)
            else (last.status_code, last.headers, last.text)
        )
        pytest.fail(f"serving never answered with version {version}: {detail}", pytrace=False)

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


_offline_images_ready = False


def ensure_offline_images() -> None:
    """The stand-ins (once per session; the script skips images that exist)."""
    global _offline_images_ready
    if ONLINE or _offline_images_ready:
        return
    subprocess.run(
        [str(REPO / "tests/e2e/build-offline-images.sh")], cwd=REPO, check=True, timeout=1800
    )
    _offline_images_ready = True


def new_stack(project: str, *overlays: str, **env_vars: str) -> Stack:
    """A Stack (not started) on free host ports: docker-compose.yml, `overlays`, and offline the
    stand-in override; a developer's compose variables dropped, `env_vars` added."""
    ports = {"mlflow": free_port(), "serving": free_port(), "console": free_port()}
    env = clean_env()
    env.update(
        MLFLOW_BIND=f"127.0.0.1:{ports['mlflow']}",
        SERVING_BIND=f"127.0.0.1:{ports['serving']}",
        MINIO_CONSOLE_BIND=f"127.0.0.1:{ports['console']}",
        MLFLOW_UI_URL=f"http://localhost:{ports['mlflow']}",
    )
    env.update(env_vars)
    files = compose_files(*overlays)
    return Stack(project, files, env, ports["mlflow"], ports["serving"], ports["console"])


def module_project(request: pytest.FixtureRequest) -> str:
    """The test module's compose project: its COMPOSE_PROJECT (or the default), prefixed."""
    return PROJECT_PREFIX + getattr(request.module, "COMPOSE_PROJECT", DEFAULT_PROJECT)


@pytest.fixture(scope="module")
def bare_stack(request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    """For tests that start parts of the stack themselves, each with its own overlays: a factory
    `bare_stack(*overlays) -> Stack` on the module's COMPOSE_PROJECT (so the images are built once
    for the module). Every Stack it made is taken down with `down -v` at the end; on a failure,
    ps and logs are printed first."""
    require_engine()
    ensure_offline_images()
    project = module_project(request)
    made: list[Stack] = []

    def make(*overlays: str, **env_vars: str) -> Stack:
        made.append(new_stack(project, *overlays, **env_vars))
        return made[-1]

    failed_before = request.session.testsfailed
    try:
        yield make
    finally:
        if made and request.session.testsfailed > failed_before:
            say(request, made[-1].diagnostics())
        if made:  # one project: any of its Stacks removes every container and volume of it
            made[-1].compose("down", "--volumes", "--remove-orphans", check=False)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The platform up and healthy, as `docker compose up -d --build --wait` leaves it, for the
    module's COMPOSE_PROJECT / COMPOSE_OVERLAYS / STACK_ENV. Torn down with `down -v` whatever
    happens; on any failure, ps and logs are printed first."""
    require_engine()
    ensure_offline_images()
    project = module_project(request)
    stack = new_stack(
        project,
        *getattr(request.module, "COMPOSE_OVERLAYS", ()),
        **getattr(request.module, "STACK_ENV", {}),
    )
    stack.compose("--profile", "train", "down", "--volumes", "--remove-orphans", timeout=180)
    failed_before = request.session.testsfailed
    try:
        started = time.monotonic()
        stack.compose("--profile", "train", "build", timeout=BUILD_TIMEOUT)
        stack.timings["build (all five images)"] = time.monotonic() - started
        stack.up("up to all healthy", "--build")
        yield stack
    except BaseException:
        say(request, stack.diagnostics())
        raise
    finally:
        if request.session.testsfailed > failed_before:
            say(request, stack.diagnostics())
        stack.compose("--profile", "train", "down", "--volumes", "--remove-orphans", check=False)
        times = ", ".join(f"{k} {v:.0f} s" for k, v in stack.timings.items())
        say(request, f"{project} timings: {times}")
