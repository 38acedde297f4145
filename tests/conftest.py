"""Shared pytest fixtures.

`local_platform` starts the no-Docker platform (`mlstack local up`: PostgreSQL, SeaweedFS S3, the
MLflow tracking server and `mlstack serve`) once per session, in a temporary state dir on free
ports, so it can run next to a developer's own platform. Only tests that request it (directly or
through `pg_conn` / `s3_client`) pay for it; unit tests stay fast.

    def test_something(local_platform):
        subprocess.run([...], env=local_platform.env, check=True)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mlstack.local.state import read_env_file

if TYPE_CHECKING:
    import psycopg2.extensions

# MLflow's usage telemetry must never try to leave this machine, from any process tests start.
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
os.environ.update(TELEMETRY_OFF)

UP_TIMEOUT_SECONDS = 420
DOWN_TIMEOUT_SECONDS = 120


def free_port() -> int:
    """A TCP port nothing listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_mlstack_local(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m mlstack local ARGS`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mlstack", "local", *args],
        env={**os.environ, **TELEMETRY_OFF},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class LocalPlatform:
    """Handle on one `mlstack local` platform; attributes are valid after `up()`."""

    state_dir: Path
    mlflow_port: int
    serving_port: int
    s3_port: int
    artifacts: str = "s3"
    artifacts_dir: Path | None = None
    workers: int = 2
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def serving_url(self) -> str:
        return self.env["MLSTACK_SERVING_URL"]

    @property
    def pg_uri(self) -> str:
        return self.env["MLSTACK_PG_URI"]

    @property
    def s3_endpoint(self) -> str:
        return self.env.get("MLSTACK_S3_ENDPOINT", "")

    @property
    def bucket(self) -> str:
        return self.env.get("MLSTACK_BUCKET", "")

    def s3(self) -> Any:
        """A boto3 S3 client (path-style) on this platform's S3 endpoint, with its keys: the
        independent client tests read the bucket with."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    def up_args(self) -> list[str]:
        args = [
            "up",
            "--state-dir", str(self.state_dir),
            "--mlflow-port", str(self.mlflow_port),
            "--serving-port", str(self.serving_port),
            "--s3-port", str(self.s3_port),
            "--artifacts", self.artifacts,
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.artifacts_dir is not None:
            args += ["--artifacts-dir", str(self.artifacts_dir)]
        return args

    def up(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`mlstack local up`; on failure (with `check`): show every log, stop, fail the test."""
        result = run_mlstack_local(self.up_args(), timeout=UP_TIMEOUT_SECONDS)
        if result.returncode != 0 and not check:
            return result
        if result.returncode != 0:
            logs = self.logs()
            self.down()
            pytest.fail(
                f"`mlstack local up` exited {result.returncode}\n--- stdout\n{result.stdout}"
                f"\n--- stderr\n{result.stderr}\n--- logs\n{logs}",
                pytrace=False,
            )
        self.env = {**os.environ, **self.exported(), **TELEMETRY_OFF}
        return result

    def exported(self) -> dict[str, str]:
        """Exactly what DIR/env exports."""
        return read_env_file(self.env_file)

    def down(self) -> subprocess.CompletedProcess[str]:
        return run_mlstack_local(
            ["down", "--state-dir", str(self.state_dir)], timeout=DOWN_TIMEOUT_SECONDS
        )

    def status(self) -> subprocess.CompletedProcess[str]:
        return run_mlstack_local(["status", "--state-dir", str(self.state_dir)], timeout=60)

    def logs(self, service: str | None = None, lines: int = 80) -> str:
        args = ["logs", *([service] if service else []), "--state-dir", str(self.state_dir)]
        result = run_mlstack_local([*args, "-n", str(lines)], timeout=60)
        return result.stdout + result.stderr


def new_platform(state_dir: Path, **kwargs: Any) -> LocalPlatform:
    """A platform handle on fresh free ports (not started)."""
    return LocalPlatform(
        state_dir=state_dir,
        mlflow_port=free_port(),
        serving_port=free_port(),
        s3_port=free_port(),
        **kwargs,
    )


PlatformFactory = Callable[..., LocalPlatform]


@pytest.fixture(scope="session")
def make_local_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformFactory]:
    """Handles on extra platforms (fresh state dir, free ports; not started): call `.up()`.

    Every one made is brought down at session end. Keyword arguments: LocalPlatform fields,
    e.g. `make_local_platform(artifacts="file", artifacts_dir=path, workers=1)`.
    """
    made: list[LocalPlatform] = []

    def make(**kwargs: Any) -> LocalPlatform:
        platform = new_platform(tmp_path_factory.mktemp("mlstack"), **kwargs)
        made.append(platform)
        return platform

    try:
        yield make
    finally:
        for platform in made:
            platform.down()


@pytest.fixture(scope="session")
def local_platform(make_local_platform: PlatformFactory) -> LocalPlatform:
    """The whole local platform (S3 artifacts), started once per session, stopped at its end."""
    platform = make_local_platform()
    platform.up()
    return platform


@pytest.fixture
def pg_conn(local_platform: LocalPlatform) -> Iterator[psycopg2.extensions.connection]:
    """A psycopg2 connection to the platform's `mlflow` database (autocommit)."""
    import psycopg2

    conn = psycopg2.connect(local_platform.pg_uri)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


# MLflow's handlers in the test process read their store from these (as `mlflow server` sets them).
MLFLOW_SERVER_ENV = ("_MLFLOW_SERVER_FILE_STORE", "_MLFLOW_SERVER_ARTIFACT_ROOT",
                     "_MLFLOW_SERVER_SERVE_ARTIFACTS")  # fmt: skip


@pytest.fixture(scope="module")
def mlflow_oracle(local_platform: LocalPlatform) -> Iterator[Any]:
    """MLflow's own Flask app (its views and store, none of mlstack's routes) in this process, on
    the platform's database: the oracle the tracking server's own routes are held to."""
    database = local_platform.pg_uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in zip(MLFLOW_SERVER_ENV, (database, "mlflow-artifacts:/", "true"),
                               strict=True):  # fmt: skip
            patch.setenv(name, value)
        from mlflow.server import app, handlers

        for endpoint in ("_search_runs", "_create_run", "_log_batch", "_update_run"):
            view = app.view_functions[endpoint]
            assert not getattr(view, "_mlstack_runs_search", False), "the oracle must be MLflow's"
            assert not getattr(view, "_mlstack_run_writes", False), "the oracle must be MLflow's"
        store = handlers._get_tracking_store(database, "mlflow-artifacts:/")
        assert not getattr(store, "_mlstack_run_writes", False), "the oracle must be MLflow's"
        yield app.test_client()


@pytest.fixture(scope="session")
def s3_client(local_platform: LocalPlatform) -> Any:
    """A boto3 S3 client (path-style) on the platform's SeaweedFS endpoint."""
    return local_platform.s3()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With MLSTACK_FORBID_SKIPS=1 (scripts/test.sh, CI), a skipped test fails the run: a tier
    that silently skips is a defect, not a pass."""
    if os.environ.get("MLSTACK_FORBID_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        names = ", ".join(report.nodeid for report in skipped[:10])
        print(f"\nMLSTACK_FORBID_SKIPS: {len(skipped)} test(s) skipped: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
