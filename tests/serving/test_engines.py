"""`--engine mlflow` (exec MLflow's own server once the URI resolves) and `--workers N`."""

from __future__ import annotations

import json

import pytest
import requests

from .conftest import ALIAS, Registry, Servers, http_status, training_data, wait_until

pytestmark = pytest.mark.integration


def payload(kind: str, rows: int = 3) -> bytes:
    features, _ = training_data(kind)
    return json.dumps({"dataframe_split": features.iloc[:rows].to_dict(orient="split")}).encode()


def test_engine_mlflow_waits_for_the_model_then_execs_mlflow(
    registry: Registry, servers: Servers
) -> None:
    name = registry.name("engine")
    server = servers.mlstack(
        f"models:/{name}@{ALIAS}", args=["--engine", "mlflow"], wait_health=False
    )
    # Nothing listens while the alias does not resolve (documented limitation of this mode).
    assert not wait_until(lambda: http_status(f"{server.url}/health") != 0, 4)
    assert server.proc.poll() is None
    version = registry.register(name, "constant", constant=9.0)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 240, 1.0), server.log()
    answer = server.post("/invocations", payload("constant", 2))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [9.0, 9.0]}
    # It is MLflow's server (its /version is the bare MLflow version), pinned to the version.
    assert requests.get(f"{server.url}/version", timeout=5).text.startswith("3.")
    assert f"models:/{name}/{version}" in server.log()


def test_two_workers_share_metrics(registry: Registry, servers: Servers) -> None:
    name = registry.name("workers")
    registry.register(name, "logreg")
    server = servers.mlstack(f"models:/{name}@{ALIAS}", args=["--workers", "2"])

    # Each worker loads on its own: wait until fresh connections (spread over the workers by
    # the kernel) all find a model.
    def all_ready() -> bool:
        return all(http_status(f"{server.url}/ping") == 200 for _ in range(12))

    assert wait_until(all_ready, 120, 0.5), server.log()
    ok = 0
    for _ in range(30):
        with requests.Session() as fresh:  # new connections spread over the workers
            answer = fresh.post(
                f"{server.url}/invocations",
                data=payload("logreg"),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
        ok += answer.status_code == 200
    assert ok == 30
    assert server.log().count("fast path: on") == 2  # one load per worker
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlstack_serving_requests_total{")
        and 'route="/invocations"' in line
        and 'status="200"' in line
    )
    assert counted == ok, text
