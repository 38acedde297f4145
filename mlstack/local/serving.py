"""`mlstack serve` against the local tracking server.

It starts before any model exists: `/health` answers as soon as the process is up, `/ping` only
once a model is loaded (the registered model and alias from Settings).
"""

from __future__ import annotations

import sys

from mlstack.local.processes import LOOPBACK, ProcessRecord, child_env, http_status, spawn_detached
from mlstack.local.services import Service


class ServingService(Service):
    name = "serving"
    start_timeout_seconds = 120.0

    @property
    def port(self) -> int:
        return self.config.serving_port

    @property
    def url(self) -> str:
        return self.config.serving_url

    def ports(self) -> list[int]:
        return [self.port]

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlstack", "serve",
            "--model-uri", self.settings.effective_model_uri,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip

    @property
    def workers(self) -> int:
        """`up --serving-workers N` (kept in platform.json), else MLSTACK_SERVE_WORKERS."""
        return self.config.serving_workers or self.settings.serve_workers

    def launch(self) -> ProcessRecord:
        env = child_env({"MLFLOW_TRACKING_URI": self.config.tracking_uri})
        return spawn_detached(self.command(), self.log_path, env=env)

    def healthy(self) -> bool:
        return http_status(f"{self.url}/health") == 200

    def model_loaded(self) -> bool:
        return http_status(f"{self.url}/ping") == 200
