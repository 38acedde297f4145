"""The MLflow tracking server: PostgreSQL backend store, proxied artifacts (S3 or a folder).

S3 credentials go to the server's environment only: clients use `mlflow-artifacts:` through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlstack.local.processes import (
    LOOPBACK,
    ProcessRecord,
    child_env,
    http_json,
    http_status,
    open_log,
    spawn_detached,
)
from mlstack.local.s3 import REGION
from mlstack.local.services import Service
from mlstack.settings import UVICORN_WORKER_PING_SECONDS

DB_UPGRADE_TIMEOUT_SECONDS = 300
# server-info keys under which MLflow offers presigned (direct-to-S3) transfers.
PRESIGNED_CAPABILITIES = ("multipart_downloads_enabled", "multipart_uploads_enabled")


class TrackingService(Service):
    name = "mlflow"
    start_timeout_seconds = 240.0  # first answer takes 30-45 s on 2 cores, more when busy

    @property
    def port(self) -> int:
        return self.config.mlflow_port

    @property
    def url(self) -> str:
        return self.config.tracking_uri

    @property
    def backend_store_uri(self) -> str:
        return self.config.sqlalchemy_pg_uri

    def ports(self) -> list[int]:
        return [self.port]

    @property
    def artifacts_destination(self) -> str:
        if self.config.artifacts == "s3":
            return f"s3://{self.settings.bucket}/{self.settings.artifacts_prefix}"
        return str(Path(self.config.artifacts_dir).resolve())

    def server_env(self) -> dict[str, str]:
        """Telemetry off everywhere; S3 endpoint and keys for the server alone."""
        jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(self.settings.local_mlflow_jobs).lower()}
        if self.config.artifacts != "s3":
            return child_env(jobs)
        s3_access = {
            "MLFLOW_S3_ENDPOINT_URL": self.config.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.settings.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.settings.s3_secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }
        return child_env(jobs | s3_access)

    def server_command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--backend-store-uri", self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination", self.artifacts_destination,
            "--workers", str(self.config.workers),
            # The app Compose and the chart run too (mlstack/tracking_app.py, through
            # docker/mlflow-server.sh): MLflow's own, plus streamed artifact downloads.
            "--app-name", "mlstack",
            f"--uvicorn-opts=--timeout-worker-healthcheck={UVICORN_WORKER_PING_SECONDS}",
        ]  # fmt: skip

    def upgrade_database(self) -> None:
        """`mlflow db upgrade` before every start (a no-op when the schema is current)."""
        command = [sys.executable, "-m", "mlflow", "db", "upgrade", self.backend_store_uri]
        fd = open_log(self.log_path, "mlflow db upgrade")
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=child_env(),
                timeout=DB_UPGRADE_TIMEOUT_SECONDS,
                check=False,
            )
        finally:
            os.close(fd)
        if result.returncode != 0:
            raise self.failure(f"`mlflow db upgrade` exited {result.returncode}")

    def ensure_extra_indexes(self) -> None:
        """The indexes mlstack adds to MLflow's schema (mlstack/platform/schema.py), after every
        upgrade: idempotent, a no-op when they are there."""
        from mlstack.platform.schema import ensure_indexes

        try:
            built = ensure_indexes(self.config.pg_uri())
        except Exception as error:  # psycopg2.Error: name it, as a failed `db upgrade` would be
            raise self.failure(f"could not create mlstack's extra indexes: {error}") from None
        if built:
            fd = open_log(self.log_path, f"mlstack schema: built {', '.join(built)}")
            os.close(fd)

    def launch(self) -> ProcessRecord:
        if self.config.artifacts == "file":
            Path(self.artifacts_destination).mkdir(parents=True, exist_ok=True)
        self.upgrade_database()
        self.ensure_extra_indexes()
        return spawn_detached(self.server_command(), self.log_path, env=self.server_env())

    def healthy(self) -> bool:
        return http_status(f"{self.url}/health") == 200

    def after_healthy(self) -> None:
        """Refuse a server that offers presigned S3 transfers: mlstack's `s3` plugin
        (mlstack/artifacts.py) is missing from this environment, e.g. an editable install made
        before pyproject.toml declared it. Clients would otherwise bypass the proxy."""
        advertised = sorted(key for key in PRESIGNED_CAPABILITIES if self.server_info().get(key))
        if advertised:
            error = self.failure(
                f"advertises presigned S3 transfers ({', '.join(advertised)}): mlstack's `s3` "
                "artifact plugin is not installed in this Python environment; re-run "
                "scripts/bootstrap.sh (or `pip install -e .`)"
            )
            self.stop()
            raise error

    def server_info(self) -> dict[str, Any]:
        """GET /api/3.0/mlflow/server-info: what the server tells clients it offers."""
        return http_json(f"{self.url}/api/3.0/mlflow/server-info")
