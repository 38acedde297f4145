"""A user's program on the host, run by the tests as a subprocess with a clean environment (only
MLFLOW_TRACKING_URI and telemetry off; no S3 credentials, no MLFLOW_ENABLE_PROXY_MULTIPART_*).

    python tests/host_client.py predict MODEL_URI PAYLOAD_JSON      -> [prediction, ...]
    python tests/host_client.py download RUN_ID ARTIFACT_PATH DIR   -> "local path"
    python tests/host_client.py upload EXPERIMENT FILE              -> "run id"

The answer is the last line of stdout, as JSON. The tests give every call a timeout: a client
sent to presigned URLs it cannot reach retries for minutes instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# What a host user's shell must not need: the tests prove the defaults are safe without them.
PRESIGNED_SWITCHES = (
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD",
)
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def host_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """This process's environment as a host user's shell has it: the tracking URI, no S3 or
    tracking-server settings of any kind (AWS_*, MLFLOW_*, MLSTACK_*), telemetry off."""
    kept = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "MLSTACK_"))
    }
    return {**kept, **TELEMETRY_OFF, "MLFLOW_TRACKING_URI": tracking_uri, **extra}


def run_host_client(
    tracking_uri: str, *args: str, timeout: float, env: dict[str, str] | None = None
) -> Any:
    """Run this program (`args`: a command and its arguments) in a host user's environment;
    its JSON answer. A hang fails the calling test after `timeout` seconds instead of hanging."""
    import pytest

    command = [sys.executable, __file__, *args]
    try:
        result = subprocess.run(
            command,
            env=host_env(tracking_uri, **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr or b""
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        pytest.fail(
            f"host client `{args[0]}` still running after {timeout:.0f} s (a client sent to "
            f"unreachable presigned URLs retries for minutes)\n{stderr[-6000:]}",
            pytrace=False,
        )
    if result.returncode != 0:
        pytest.fail(
            f"host client `{' '.join(args)[:300]}` exited {result.returncode}\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def predict(model_uri: str, payload_json: str) -> list[float]:
    import mlflow
    import pandas as pd

    split = json.loads(payload_json)["dataframe_split"]
    model = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame(split["data"], columns=split["columns"])
    return [float(x) for x in model.predict(frame)]


def download(run_id: str, artifact_path: str, folder: str) -> str:
    import mlflow

    return str(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=folder
        )
    )


def upload(experiment: str, file: str) -> str:
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_artifact(file)
    return str(run.info.run_id)


COMMANDS: dict[str, Any] = {"predict": predict, "download": download, "upload": upload}

if __name__ == "__main__":
    for name in PRESIGNED_SWITCHES:
        if name in os.environ:
            sys.exit(f"host_client: {name} is set; the tests run without it")
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
