"""The tracking server's per-endpoint metrics (mlstack/tracking_app.py), the way the server runs
them: hooks on a Flask app, in a process whose prometheus_client writes to a multiprocess
directory (`mlflow server --expose-prometheus` sets `prometheus_multiproc_dir` for its workers),
requests over a real socket, and the directory read back with prometheus_client's
MultiProcessCollector, as MLflow's /metrics does. The label set stays bounded: URL rule templates,
never raw paths; one `unmatched` route; one `other` method; probes and the scrape left out; an
answer given early by a before-request hook (basic auth's 401) still counted.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from mlstack.tracking_app import ROUTE_METRIC

pytestmark = pytest.mark.unit

# A Flask app shaped like MLflow's: fixed API rules, a rule with a path converter, and a
# before-request hook that refuses early (as the basic-auth app does with 401).
SERVER = r"""
import sys
from flask import Flask, request
from werkzeug.serving import make_server
from mlstack.tracking_app import install_route_metrics

app = Flask("tracking-standin")

@app.before_request
def refuse():
    if request.headers.get("X-Refuse"):
        return "no login", 401

@app.route("/api/2.0/mlflow/runs/get")
def get_run():
    return ("not found", 404) if request.args.get("run_id") == "nope" else "run"

@app.route("/api/2.0/mlflow-artifacts/artifacts/<path:artifact_path>", methods=["GET", "PUT"])
def artifact(artifact_path):
    return artifact_path

@app.route("/health")
def health():
    return "OK"

@app.route("/boom")
def boom():
    raise RuntimeError("a bug")

install_route_metrics(app)
install_route_metrics(app)  # idempotent: one observation per request, not two
server = make_server("127.0.0.1", 0, app)
print(server.server_port, flush=True)
server.serve_forever()
"""


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"prometheus_multiproc_dir": str(metrics_dir), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}", metrics_dir
    finally:
        process.terminate()
        process.wait(timeout=30)


def counts(metrics_dir: Path) -> dict[tuple[str, str, str], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    found: dict[tuple[str, str, str], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == f"{ROUTE_METRIC}_count":
                key = (sample.labels["method"], sample.labels["route"], sample.labels["status"])
                found[key] = sample.value
    return found


def test_requests_are_counted_by_rule_template_method_and_status(
    server: tuple[str, Path],
) -> None:
    url, metrics_dir = server
    for run_id in ("a1", "b2", "c3", "nope"):
        requests.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=10)
    for path in ("model/MLmodel", "plots/one.png", "x/y/z.bin"):
        requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=10)
    requests.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/a/b", data=b"1", timeout=10)
    for path in ("/no/such/route/1", "/no/such/route/2"):
        assert requests.get(url + path, timeout=10).status_code == 404
    assert requests.request("PURGE", f"{url}/no/such", timeout=10).status_code == 404
    assert requests.get(f"{url}/api/2.0/mlflow/runs/get", headers={"X-Refuse": "1"},
                        timeout=10).status_code == 401  # fmt: skip
    assert requests.get(f"{url}/boom", timeout=10).status_code == 500
    assert requests.get(f"{url}/health", timeout=10).status_code == 200

    # Written before each answer left the server (an after-request hook): nothing to wait for.
    assert counts(metrics_dir) == {
        ("GET", "/api/2.0/mlflow/runs/get", "200"): 3.0,
        ("GET", "/api/2.0/mlflow/runs/get", "404"): 1.0,
        ("GET", "/api/2.0/mlflow/runs/get", "401"): 1.0,
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/<path:artifact_path>", "200"): 3.0,
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/<path:artifact_path>", "200"): 1.0,
        ("GET", "unmatched", "404"): 2.0,
        ("other", "unmatched", "404"): 1.0,
        ("GET", "/boom", "500"): 1.0,
    }
