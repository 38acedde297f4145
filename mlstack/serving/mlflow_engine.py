"""`--engine mlflow`: exec MLflow's own `mlflow models serve` on the resolved model version.

MLflow's server resolves `models:/name@alias` once, at start, and cannot start without a model.
So this waits (polling the registry, serving nothing meanwhile) until the URI resolves, pins the
version (`models:/name/<version>`) and replaces this process with `mlflow models serve`. It does
not follow later alias moves: restart it to pick up a new version (that is what the default
`mlstack` engine is for).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from mlstack.settings import Settings

_logger = logging.getLogger("mlstack.serving")


def resolve_when_available(settings: Settings) -> str:
    """Block until the model URI resolves in the registry; return a pinned URI."""
    from mlflow import MlflowClient

    from mlstack.serving.registry import ModelRef

    ref = ModelRef.parse(settings.effective_model_uri)
    if ref.kind == "other":
        return ref.uri
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    waited_since = time.monotonic()
    last_report = 0.0
    while True:
        try:
            if ref.kind == "alias":
                version = str(client.get_model_version_by_alias(ref.name, ref.alias).version)
            elif ref.kind == "version":
                version = str(client.get_model_version(ref.name, ref.version).version)
            else:
                versions = client.search_model_versions(f"name = '{ref.name}'")
                if not versions:
                    raise LookupError(f"{ref.name} has no versions")
                version = str(max(int(v.version) for v in versions))
            return ref.concrete_uri(version)
        except Exception as exc:
            now = time.monotonic()
            if now - last_report > 30:
                last_report = now
                _logger.info(
                    "waiting for %s to resolve (%.0fs so far): %s",
                    ref.uri,
                    now - waited_since,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                )
            time.sleep(settings.poll_interval_seconds)


def exec_mlflow_serve(settings: Settings) -> int:
    from mlstack.serving.app import configure_process

    configure_process(settings)
    uri = resolve_when_available(settings)
    bin_dir = Path(sys.executable).parent
    mlflow_bin = bin_dir / "mlflow"
    command = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    command += [
        "models", "serve", "-m", uri, "--env-manager", "local",
        "-h", settings.serve_host, "-p", str(settings.serve_port),
        "-w", str(settings.serve_workers),
    ]  # fmt: skip
    # `mlflow models serve` runs `uvicorn` from PATH: put this interpreter's bin first.
    os.environ["PATH"] = os.pathsep.join([str(bin_dir), *os.get_exec_path()])
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "5"  # the stock server's one download
    _logger.info("exec: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached
