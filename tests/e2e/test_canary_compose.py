"""The Compose stack serving a canary configured through its variables (docs/serving.md#rollouts).

`CANARY_WEIGHT=40` in the environment of `docker compose`, nothing else: the serving container
follows `linear_model@champion` and `linear_model@challenger` (both registered from the host
through the published MLflow port, as a notebook would), sends about 40 % of the requests to the
challenger (binomial bounds), and every answer's prediction is the one of the version and alias its
headers name. Then `mlstack promote linear_model` inside the serving container moves the champion,
and serving answers with the new version. Only the services serving needs are started (no
trainer images). Its own project, `mlstack-e2e-canary`, on free ports; `down -v` at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

COMPOSE_PROJECT = "mlstack-e2e-canary"
WEIGHT = 40
REQUESTS = 300

REGISTER = r"""
import sys
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.dummy import DummyRegressor
from sklearn.datasets import load_diabetes

X, y = load_diabetes(return_X_y=True, as_frame=True)
mlflow.set_experiment("canary-e2e")
client = MlflowClient()
for value, alias in ((1.0, "champion"), (2.0, "challenger")):
    model = DummyRegressor(strategy="constant", constant=value).fit(X, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(X, model.predict(X))
        )
    version = mlflow.register_model(info.model_uri, "linear_model").version
    client.set_registered_model_alias("linear_model", alias, version)
    print(alias, version)
"""


def register_from_host(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=stack.mlflow_url, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", REGISTER], env=env, capture_output=True, text=True, timeout=300, check=False
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["champion"], ["challenger"]))  # fmt: skip


def rollout_state(stack: Stack) -> dict[str, object]:
    try:
        body = requests.get(stack.serving_url + "/rollouts", timeout=10).json()
        return dict(body["models"].get("linear_model") or {})
    except (requests.RequestException, ValueError, KeyError):
        return {}


def test_compose_serves_a_canary_set_by_its_variables(bare_stack: Callable[..., Stack]) -> None:
    stack = bare_stack(CANARY_WEIGHT=str(WEIGHT))
    config = stack.compose("config", "--format", "json").stdout
    assert f'"MLSTACK_CANARY_WEIGHT": "{WEIGHT}"' in config
    stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
    stack.compose("up", "-d", "--build", "--wait", "serving", timeout=25 * 60)
    versions = register_from_host(stack)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = rollout_state(stack)
        challenger = state.get("challenger") or {}
        champion = state.get("champion") or {}
        if (
            isinstance(challenger, dict) and challenger.get("state") == "serving"
            and isinstance(champion, dict) and champion.get("version") == versions["champion"]
        ):  # fmt: skip
            break
        time.sleep(2)
    else:
        pytest.fail(f"serving never followed both aliases: {rollout_state(stack)}")

    payload = stack.diabetes_payload()
    seen: Counter[tuple[str, str, float]] = Counter()
    with requests.Session() as session:
        for _ in range(REQUESTS):
            r = session.post(stack.serving_url + "/invocations", json=payload, timeout=30)
            assert r.status_code == 200, r.text
            seen[(r.headers["X-Model-Version"], r.headers["X-Model-Alias"], r.json()["predictions"][0])] += 1  # fmt: skip
    expected = {
        (versions["champion"], "champion", 1.0),
        (versions["challenger"], "challenger", 2.0),
    }
    assert set(seen) <= expected, seen
    share = seen[(versions["challenger"], "challenger", 2.0)]
    # Binomial(300, 0.4): mean 120, sd 8.5; 5 sd bounds.
    assert 78 <= share <= 162, seen

    promoted = stack.compose(
        "exec", "-T", "serving", "mlstack", "promote", "linear_model",
        "--serving-url", "http://127.0.0.1:5001",
    )  # fmt: skip
    assert f"@champion {versions['champion']} -> {versions['challenger']}" in promoted.stdout
    # Until serving's next poll the canary still sends some requests to v2 as the challenger:
    # wait for v2 answering as the champion, then every answer is that.
    new = (versions["challenger"], "champion", 2.0)
    deadline = time.monotonic() + 120
    last: tuple[str, str, float] | None = None
    while time.monotonic() < deadline and last != new:
        r = stack.invoke(payload)
        last = (r.headers.get("X-Model-Version", ""), r.headers.get("X-Model-Alias", ""), r.json()["predictions"][0])  # fmt: skip
        time.sleep(0.5)
    assert last == new, last
    after = Counter()
    for _ in range(30):
        r = stack.invoke(payload)
        after[(r.headers["X-Model-Version"], r.headers["X-Model-Alias"], r.json()["predictions"][0])] += 1  # fmt: skip
    assert set(after) == {new}, after
