"""One typed settings object for everything configured through the environment.

Every component reads its environment here and nowhere else. Variables are `MLSTACK_*`, except the
ones MLflow itself defines (`MLFLOW_TRACKING_URI`), which keep MLflow's names so the same
environment drives both MLflow's client and ours.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# uvicorn's supervisor kills a worker that does not answer its ping within 5 s (its default). A
# worker still importing MLflow on busy cores misses that: at load average 16-24 every worker was
# killed 5 s into its start, for minutes. The tracking server (native, Compose, chart) and
# `mlstack serve --workers N` give workers this long instead; a hung worker still goes.
UVICORN_WORKER_PING_SECONDS = 120


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLSTACK_", extra="ignore")

    # --- tracking (trainers, serving) -------------------------------------------------------
    tracking_uri: str = Field(
        default="http://127.0.0.1:5000",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MLSTACK_TRACKING_URI"),
        description="Where trainers log and serving reads the registry.",
    )
    ui_url: str | None = Field(
        default=None,
        description="Base URL users open for the MLflow UI (defaults to the tracking URI); "
        "differs from the tracking URI inside containers (http://mlflow:5000 vs localhost).",
    )
    tracking_username: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_USERNAME")
    )
    tracking_password: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_PASSWORD")
    )
    connect_attempts: int = Field(default=5, ge=1, description="Tries before exit code 3.")
    connect_backoff_seconds: float = Field(default=1.0, ge=0)
    retry_window_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Once a run has started, how long a trainer keeps retrying one MLflow request "
        "(server down, 5xx) before the run fails, and then keeps trying to mark it FAILED. Set "
        "MLflow's MLFLOW_HTTP_REQUEST_MAX_RETRIES/_BACKOFF_FACTOR instead to take over.",
    )
    git_commit: str | None = Field(
        default=None, description="Commit tag for runs where no .git is at hand (images)."
    )

    # --- serving ----------------------------------------------------------------------------
    serve_model: str = Field(default="linear_model", description="Registered model to serve.")
    serve_alias: str = Field(default="champion")
    serve_model_uri: str | None = Field(
        default=None, description="Overrides serve_model/serve_alias: any models:/ or runs:/ URI."
    )
    serve_host: str = "127.0.0.1"
    serve_port: int = 5001
    serving_engine: Literal["mlstack", "mlflow"] = Field(
        default="mlstack",
        validation_alias=AliasChoices("SERVING_ENGINE", "MLSTACK_SERVING_ENGINE"),
    )
    # Compose's name too: `SERVING_WORKERS=2 mlstack local up` does what it does in `.env`.
    serve_workers: int = Field(
        default=1, ge=1, validation_alias=AliasChoices("MLSTACK_SERVE_WORKERS", "SERVING_WORKERS")
    )
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    registry_timeout_seconds: float = Field(
        default=10.0, gt=0, description="HTTP timeout of serving's registry polls and downloads."
    )
    model_download_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="HTTP read timeout of serving's model downloads: the tracking server copies "
        "a file whole from S3 before its first byte (about 15 s for 2 GiB on 2 busy cores).",
    )
    registry_max_retries: int = Field(
        default=1, ge=0, description="Retries per registry call (MLflow's default retries 7x)."
    )
    serving_url: str = Field(
        default="http://127.0.0.1:5001",
        description="Where `mlstack promote` asks serving for the guard's state.",
    )
    # --- rollouts: a challenger beside the champion (docs/serving.md#rollouts) ---------------
    serve_challenger_alias: str = Field(
        default="challenger",
        description="Alias of the challenger followed beside each champion; empty: none.",
    )
    canary_weight: float = Field(
        default=0.0, ge=0, le=100, description="Percent of requests the challenger answers."
    )
    canary_sticky_header: str | None = Field(
        default=None,
        description="Request header whose value pins a client to one version (e.g. X-User-Id).",
    )
    shadow_percent: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Percent of champion-answered requests copied to the challenger, off the "
        "request path; its answers are recorded, never returned.",
    )
    shadow_max_cpu: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Share of one core shadow scoring may take; copies beyond it are dropped "
        "(counted), so a shadow never slows the champion much.",
    )
    shadow_tolerance: float = Field(
        default=1e-6, ge=0, description="Relative/absolute tolerance of numeric agreement."
    )
    guard_max_error_ratio: float = Field(default=0.05, ge=0, le=1)
    guard_max_p99_seconds: float = Field(default=1.0, gt=0)
    guard_window_seconds: float = Field(default=60.0, gt=0)
    guard_min_requests: int = Field(default=20, ge=1)
    serve_tokens_file: Path | None = Field(
        default=None,
        description="Bearer tokens of `mlstack serve`, one per line (a mounted secret); unset: "
        "no authentication. Never on the command line.",
    )
    serve_metrics_tokens_file: Path | None = Field(
        default=None,
        description="Bearer tokens accepted on GET /metrics only (the monitoring overlay's scrape "
        "token), same format; they open no scoring route. Used only with MLSTACK_SERVE_TOKENS_FILE: "
        "without it /metrics is open anyway.",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR"),
        description="Set by `mlstack serve --workers N>1` for its workers' shared /metrics.",
    )

    # --- local platform (`mlstack local`) ---------------------------------------------------
    state_dir: Path = Path(".mlstack")
    s3_access_key: str = "mlstack"  # CHANGEME for anything beyond a laptop
    s3_secret_key: str = "mlstack-secret"  # CHANGEME
    bucket: str = "mlflow"
    artifacts_prefix: str = "artifacts"
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_S3_ENDPOINT_URL", "MLSTACK_S3_ENDPOINT_URL"),
        description="S3 endpoint of the tracking server's artifact store (the compose mlflow "
        "container's; `mlstack backup` object commands run there). None: AWS S3.",
    )
    local_mlflow_jobs: bool = Field(
        default=False,
        description="Run the MLflow server's job runner (GenAI jobs; 8 more processes, ~5 s "
        "slower start) in `mlstack local`.",
    )

    @property
    def tracking_auth(self) -> tuple[str, str] | None:
        if self.tracking_username and self.tracking_password:
            return (self.tracking_username, self.tracking_password)
        return None

    @property
    def effective_ui_url(self) -> str:
        return (self.ui_url or self.tracking_uri).rstrip("/")

    @property
    def effective_model_uri(self) -> str:
        return self.serve_model_uri or f"models:/{self.serve_model}@{self.serve_alias}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
