"""Running the ASGI app on uvicorn (uvloop event loop, httptools parser)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from mlstack.settings import UVICORN_WORKER_PING_SECONDS, Settings

_logger = logging.getLogger("mlstack.serving")


def _export_for_workers(settings: Settings) -> None:
    """Worker processes rebuild Settings from the environment: hand them the CLI's choices."""
    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "MLSTACK_SERVE_MODEL_URI": settings.effective_model_uri,
            "MLSTACK_SERVE_ALIAS": settings.serve_alias,
            "MLSTACK_POLL_INTERVAL_SECONDS": str(settings.poll_interval_seconds),
            "MLSTACK_MAX_BODY_BYTES": str(settings.max_body_bytes),
            "MLSTACK_REQUEST_TIMEOUT_SECONDS": str(settings.request_timeout_seconds),
            "MLSTACK_REGISTRY_TIMEOUT_SECONDS": str(settings.registry_timeout_seconds),
            "MLSTACK_MODEL_DOWNLOAD_TIMEOUT_SECONDS": str(settings.model_download_timeout_seconds),
            "MLSTACK_REGISTRY_MAX_RETRIES": str(settings.registry_max_retries),
            "MLSTACK_SERVE_CHALLENGER_ALIAS": settings.serve_challenger_alias,
            "MLSTACK_CANARY_WEIGHT": str(settings.canary_weight),
            "MLSTACK_SHADOW_PERCENT": str(settings.shadow_percent),
            "MLSTACK_SHADOW_MAX_CPU": str(settings.shadow_max_cpu),
        }
    )
    if settings.canary_sticky_header:
        os.environ["MLSTACK_CANARY_STICKY_HEADER"] = settings.canary_sticky_header
    if settings.serve_tokens_file is not None:  # the path only: workers read the file
        os.environ["MLSTACK_SERVE_TOKENS_FILE"] = str(settings.serve_tokens_file)
    if settings.serve_metrics_tokens_file is not None:
        os.environ["MLSTACK_SERVE_METRICS_TOKENS_FILE"] = str(settings.serve_metrics_tokens_file)


def run_server(settings: Settings) -> int:
    import uvicorn

    from mlstack.serving.app import ServeConfig, ServingApp, configure_process

    configure_process(settings)
    common = {
        "host": settings.serve_host,
        "port": settings.serve_port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_level": "info",
    }
    if settings.serve_workers == 1:
        uvicorn.run(ServingApp(ServeConfig.from_settings(settings)), **common)
        return 0
    # Several processes: each polls and loads on its own; /metrics aggregates them through
    # prometheus_client's multiprocess files.
    multiproc_dir = tempfile.mkdtemp(prefix="mlstack-serve-metrics-")
    _export_for_workers(settings)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    try:
        uvicorn.run(
            "mlstack.serving.app:create_app",
            factory=True,
            workers=settings.serve_workers,
            timeout_worker_healthcheck=UVICORN_WORKER_PING_SECONDS,
            **common,
        )
    finally:
        shutil.rmtree(multiproc_dir, ignore_errors=True)
    return 0
