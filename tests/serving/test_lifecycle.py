"""`mlstack serve` following the registry: start before a model exists, hot reload under load,
registry outages, broken versions, several models on one port, /version, /metrics."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse

import pytest
import requests

from .conftest import ALIAS, Registry, Servers, TcpProxy, http_status, training_data, wait_until

pytestmark = pytest.mark.integration

POLL = 1.0


def payload(kind: str = "constant", rows: int = 2) -> bytes:
    features, _ = training_data(kind)
    return json.dumps({"dataframe_split": features.iloc[:rows].to_dict(orient="split")}).encode()


def test_starts_without_a_model_then_serves_it_without_restart(
    registry: Registry, servers: Servers
) -> None:
    name = registry.name("late")
    server = servers.mlstack(f"models:/{name}@{ALIAS}", poll_interval=POLL)
    # Liveness at once; readiness and invocations wait for a model.
    assert http_status(f"{server.url}/health") == 200
    assert http_status(f"{server.url}/ping") == 503
    early = server.post("/invocations", payload())
    assert early.status_code == 503
    assert early.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert f"models:/{name}@{ALIAS}" in early.json()["message"]
    version = requests.get(f"{server.url}/version", timeout=5).json()
    assert version["model_version"] is None and version["model_uri"] == f"models:/{name}@{ALIAS}"

    registered = registry.register(name, "constant", constant=7.0)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()
    answer = server.post("/invocations", payload())
    assert answer.status_code == 200
    assert answer.json() == {"predictions": [7.0, 7.0]}
    assert answer.headers["x-model-version"] == registered
    assert answer.headers["x-scoring-path"] == "fast"
    info = requests.get(f"{server.url}/version", timeout=5).json()
    assert info["model_version"] == registered
    assert info["loaded_uri"] == f"models:/{name}/{registered}"
    assert info["mlstack"] and info["mlflow"] and info["fast_path"] is True
    assert server.proc.poll() is None


def test_hot_reload_under_load_has_no_failed_or_mixed_answers(
    registry: Registry, servers: Servers
) -> None:
    """Promote v2 while 6 threads hammer the server: every answer is 200, and each answer's
    prediction matches the version its header names (never a mix)."""
    name = registry.name("reload")
    v1 = registry.register(name, "constant", constant=1.0)
    v2 = registry.register(name, "constant", constant=2.0, alias=None)
    server = servers.mlstack(f"models:/{name}@{ALIAS}", poll_interval=POLL)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()

    expected = {v1: 1.0, v2: 2.0}
    body = payload()
    stop = threading.Event()
    seen: Counter[tuple[int, str, Any]] = Counter()
    lock = threading.Lock()
    problems: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(
                        f"{server.url}/invocations",
                        data=body,
                        headers={"Content-Type": "application/json"},
                        timeout=30,
                    )
                except requests.RequestException as exc:
                    with lock:
                        problems.append(f"transport error: {exc}")
                    continue
                version = r.headers.get("x-model-version", "")
                values = r.json().get("predictions") if r.status_code == 200 else None
                with lock:
                    seen[(r.status_code, version, json.dumps(values))] += 1
                    if r.status_code != 200:
                        problems.append(f"{r.status_code}: {r.text[:200]}")
                    elif values != [expected.get(version)] * 2:
                        problems.append(f"mixed: version {version} answered {values}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        promoted = time.monotonic()
        registry.client.set_registered_model_alias(name, ALIAS, v2)

        def switched() -> bool:
            with lock:
                return any(version == v2 for (_, version, _) in seen)

        # Poll interval + load time (a few seconds here), with room for a loaded machine.
        assert wait_until(switched, 45), f"never switched to {v2}:\n{server.log()}"
        switch_seconds = time.monotonic() - promoted
        time.sleep(1.0)  # keep the load on after the swap
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not problems, problems[:10]
    versions = {version for (_, version, _) in seen}
    assert versions == {v1, v2}, seen
    assert sum(seen.values()) > 50
    assert switch_seconds < 45
    info = requests.get(f"{server.url}/version", timeout=5).json()
    assert info["model_version"] == v2
    print(f"switched to v{v2} {switch_seconds:.1f}s after promotion; answers: {dict(seen)}")


def test_registry_down_keeps_serving(
    registry: Registry, servers: Servers, tcp_proxy: Any, local_platform: Any
) -> None:
    name = registry.name("outage")
    version = registry.register(name, "constant", constant=3.0)
    target = urlparse(local_platform.tracking_uri)
    proxy: TcpProxy = tcp_proxy(target.hostname, target.port)
    server = servers.mlstack(f"models:/{name}@{ALIAS}", tracking_uri=proxy.url, poll_interval=POLL)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()

    proxy.close()
    assert wait_until(lambda: "unreachable" in server.log(), 30), server.log()
    time.sleep(3 * POLL)
    for _ in range(20):
        answer = server.post("/invocations", payload())
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [3.0, 3.0]}
        assert answer.headers["x-model-version"] == version
    assert http_status(f"{server.url}/ping") == 200
    assert http_status(f"{server.url}/health") == 200
    assert server.proc.poll() is None


def test_broken_version_leaves_the_old_one_serving(registry: Registry, servers: Servers) -> None:
    name = registry.name("broken")
    good = registry.register(name, "constant", constant=4.0)
    server = servers.mlstack(f"models:/{name}@{ALIAS}", poll_interval=POLL)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()

    bad = registry.register_broken(name)
    failure = re.compile(
        rf"loading models:/{name}/{bad} failed; models:/{name}/{good} keeps serving"
    )
    assert wait_until(lambda: bool(failure.search(server.log())), 60), server.log()
    assert "Reason:" in server.log()
    time.sleep(2 * POLL)
    answer = server.post("/invocations", payload())
    assert answer.status_code == 200
    assert answer.json() == {"predictions": [4.0, 4.0]}
    assert answer.headers["x-model-version"] == good
    # Not retried at every poll: one failure logged for this version so far.
    assert len(failure.findall(server.log())) == 1
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'mlstack_serving_model_loads_total{model="default",result="failure"} 1.0' in metrics
    # What the monitoring alerts read: failing now, and which version still answers.
    assert 'mlstack_serving_model_load_failing{model="default"} 1.0' in metrics
    info = f'mlstack_serving_model_info{{model="default",name="{name}",version="{good}"}} 1.0'
    assert info in metrics

    # A fixed good version later still gets picked up.
    fixed = registry.register(name, "constant", constant=5.0)
    assert wait_until(
        lambda: server.post("/invocations", payload()).headers.get("x-model-version") == fixed, 60
    ), server.log()
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'mlstack_serving_model_load_failing{model="default"} 0.0' in metrics


def test_several_models_on_one_port(registry: Registry, servers: Servers) -> None:
    default_name = registry.name("multi_default")
    other_name = registry.name("multi_other")
    registry.register(default_name, "constant", constant=10.0)
    server = servers.mlstack(f"models:/{default_name}@{ALIAS}", poll_interval=POLL)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()

    other_version = registry.register(other_name, "logreg")
    route = f"/models/{other_name}/invocations"
    # Discovered at the next poll, loaded lazily by its first request.
    assert wait_until(lambda: server.post(route, payload("logreg")).status_code == 200, 60)
    answer = server.post(route, payload("logreg"))
    assert answer.headers["x-model-version"] == other_version
    assert answer.headers["x-model-name"] == other_name
    assert len(answer.json()["predictions"]) == 2
    # The default model also answers under its own name (same loaded model).
    own = server.post(f"/models/{default_name}/invocations", payload())
    assert own.status_code == 200 and own.json() == {"predictions": [10.0, 10.0]}
    # A model that does not hold the alias: 404 in MLflow's error shape.
    missing = server.post(f"/models/{registry.name('nope')}/invocations", payload())
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    listing = requests.get(f"{server.url}/models", timeout=5).json()
    assert listing["registry"][other_name] == other_version
    assert listing["loaded"][other_name] == other_version

    # The named model follows its alias too.
    newer = registry.register(other_name, "logreg")
    assert wait_until(
        lambda: server.post(route, payload("logreg")).headers.get("x-model-version") == newer, 60
    ), server.log()
    # ... and disappears when it loses the alias.
    registry.client.delete_registered_model_alias(other_name, ALIAS)
    assert wait_until(lambda: server.post(route, payload("logreg")).status_code == 404, 30)


def test_metrics(registry: Registry, servers: Servers) -> None:
    name = registry.name("metrics")
    version = registry.register(name, "constant", constant=1.5)
    server = servers.mlstack(f"models:/{name}@{ALIAS}", poll_interval=POLL)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()
    for _ in range(3):
        assert server.post("/invocations", payload()).status_code == 200
    assert server.post("/invocations", b"{bad json").status_code == 400
    assert requests.get(f"{server.url}/nowhere", timeout=5).status_code == 404
    response = requests.get(f"{server.url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'mlstack_serving_requests_total{model="default",route="/invocations",status="200"} 3.0'
        in text
    )
    assert (
        'mlstack_serving_requests_total{model="default",route="/invocations",status="400"} 1.0'
        in text
    )
    assert 'route="other",status="404"' in text
    assert (
        'mlstack_serving_request_duration_seconds_bucket{le="0.01",model="default",route="/invocations"}'
        in text
    )
    assert f'mlstack_serving_model_version{{model="default"}} {float(version)}' in text
    assert 'mlstack_serving_model_loaded{model="default"} 1.0' in text
    assert 'mlstack_serving_invocations_path_total{model="default",path="fast"} 3.0' in text
    assert 'mlstack_serving_invocations_path_total{model="default",path="mlflow"} 1.0' in text


def test_fixed_version_uri_and_misc_routes(registry: Registry, servers: Servers) -> None:
    name = registry.name("fixed")
    v1 = registry.register(name, "constant", constant=6.0)
    registry.register(name, "constant", constant=8.0)  # moves the alias; the URI pins v1
    server = servers.mlstack(f"models:/{name}/{v1}", poll_interval=POLL)
    assert wait_until(lambda: http_status(f"{server.url}/ping") == 200, 60), server.log()
    answer = server.post("/invocations", payload())
    assert answer.json() == {"predictions": [6.0, 6.0]}
    assert answer.headers["x-model-version"] == v1
    assert requests.get(f"{server.url}/invocations", timeout=5).status_code == 405
    assert requests.post(f"{server.url}/health", timeout=5).status_code == 405
