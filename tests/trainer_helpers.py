"""Helpers shared by the test modules that run trainers against a local platform: the exact user
command with a user's environment, and waiting for serving to pick a version up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("linear_model", "logistic_model", "random_forest_model")
SERVING_WAIT_SECONDS = 90


@dataclass
class Trained:
    returncode: int
    stdout: str
    stderr: str


def trainer_env(platform: Any) -> dict[str, str]:
    """What a user's shell has: the tracking URI, and no S3 credentials at all."""
    hidden = ("AWS_", "MLSTACK_S3_", "MLFLOW_S3_")
    return {k: v for k, v in platform.env.items() if not k.startswith(hidden)}


def train(platform: Any, model: str, *args: str) -> Trained:
    result = subprocess.run(
        [sys.executable, str(ROOT / model / "train.py"), *args],
        env=trainer_env(platform),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    return Trained(result.returncode, result.stdout, result.stderr)


def wait_until_served(invocations_url: str, version: str, payload: dict[str, Any]) -> None:
    """Poll `invocations_url` until the given version answers (serving polls the registry)."""
    deadline = time.monotonic() + SERVING_WAIT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        try:
            response = requests.post(invocations_url, json=payload, timeout=10)
            if response.ok and response.headers.get("x-model-version") == version:
                return
            last = f"{response.status_code} v{response.headers.get('x-model-version')}: {response.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    pytest.fail(f"{invocations_url} did not serve version {version} in time: {last}")


def split_payload(frame: pd.DataFrame) -> dict[str, Any]:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
