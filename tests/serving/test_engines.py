"""`--engine mlflow` (exec MLflow's own server once the URI resolves) and `--workers N`."""

from __future__ import annotations

import json
import time

import pytest
import requests

from .conftest import (
    ALIAS,
    Registry,
    ServerProcess,
    Servers,
    http_status,
    training_data,
    wait_until,
)

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


POLL = 3.0  # seconds: the agreement bound of the two-worker tests


@pytest.fixture(scope="module")
def two_workers(registry: Registry, servers: Servers) -> tuple[str, ServerProcess]:
    """`mlstack serve --workers 2` on a logistic regression, both workers loaded."""
    name = registry.name("workers")
    registry.register(name, "logreg")
    server = servers.mlstack(f"models:/{name}@{ALIAS}", poll_interval=POLL, args=["--workers", "2"])

    # Each worker loads on its own: wait until fresh connections (spread over the workers by
    # the kernel) all find a model.
    def all_ready() -> bool:
        return all(http_status(f"{server.url}/ping") == 200 for _ in range(12))

    assert wait_until(all_ready, 120, 0.5), server.log()
    return name, server


def invocations_200(server: ServerProcess) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlstack_serving_requests_total{")
        and 'route="/invocations"' in line
        and 'status="200"' in line
    )


def test_two_workers_share_metrics(two_workers: tuple[str, ServerProcess]) -> None:
    _, server = two_workers
    before = invocations_200(server)
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
    assert invocations_200(server) - before == ok


def test_workers_agree_within_one_poll_interval_after_the_champion_moves(
    registry: Registry, two_workers: tuple[str, ServerProcess]
) -> None:
    """Each worker polls on its own, on the wall clock's multiples of the interval: after the
    alias moves, the time from the first answer of the new version to the last answer of the old
    one (fresh connections, so both workers answer) stays within one poll interval."""
    name, server = two_workers
    client = registry.client
    old = client.get_model_version_by_alias(name, ALIAS).version
    import mlflow

    new = str(mlflow.register_model(f"models:/{name}/{old}", name).version)  # same artifacts
    client.set_registered_model_alias(name, ALIAS, new)
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with requests.Session() as fresh:
            answer = fresh.post(
                f"{server.url}/invocations",
                data=payload("logreg", 1),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
        assert answer.status_code == 200, answer.text
        seen.append((time.monotonic(), answer.headers["X-Model-Version"]))
        firsts = [t for t, v in seen if v == new]
        if firsts and seen[-1][0] - firsts[0] > 2 * POLL:
            break  # long enough after the first new answer to have caught a lagging worker
        time.sleep(0.02)
    firsts = [t for t, v in seen if v == new]
    assert firsts, f"no worker ever served version {new}:\n{server.log()}"
    olds = [t for t, v in seen if v == old and t > firsts[0]]
    last_old_after_new = olds[-1] if olds else firsts[0]
    assert last_old_after_new - firsts[0] <= POLL, seen
    assert {v for t, v in seen if t > firsts[0] + POLL} == {new}
    # Both workers moved (each logs its own load), and nothing else was ever served.
    assert server.log().count(f"serving models:/{name}/{new} for") == 2, server.log()
    assert {v for _, v in seen} <= {old, new}
