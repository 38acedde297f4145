"""The tracking server's per-endpoint metrics (mlstack/tracking_app.py), the way the server runs
them: hooks on a Flask app, in a process whose prometheus_client writes to a multiprocess
directory (`mlflow server --expose-prometheus` sets `prometheus_multiproc_dir` for its workers),
requests over a real socket, and the directory read back with prometheus_client's
MultiProcessCollector, as MLflow's /metrics does. The label set stays bounded: URL rule templates,
never raw paths; one `unmatched` route; one `other` method; probes and the scrape left out; an
answer given early by a before-request hook (basic auth's 401) still counted. Then the same on an
ASGI app shaped like MLflow 3.17's under uvicorn: native FastAPI routes (the artifact proxy) under
their path template, also when a middleware refuses them (basic auth's 401), and the mounted
Flask app counted once (by its hooks).
"""

from __future__ import annotations

import subprocess
import sys
import time
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


ASGI_SERVER = r"""
import sys
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from flask import Flask
from starlette.middleware.wsgi import WSGIMiddleware
from mlstack.tracking_app import NativeRouteMetrics, install_route_metrics

flask_app = Flask("flask-part")

@flask_app.route("/api/2.0/mlflow/runs/get")
def get_run():
    return "run"

install_route_metrics(flask_app)
app = FastAPI()

@app.middleware("http")
async def refuse(request: Request, call_next):  # as basic auth's middleware on native routes
    if request.headers.get("X-Refuse"):
        return PlainTextResponse("no login", status_code=401)
    return await call_next(request)

@app.get("/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}")
async def download(artifact_path: str):
    return PlainTextResponse(artifact_path)

@app.put("/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}")
async def upload(artifact_path: str, request: Request):
    return PlainTextResponse(str(len(await request.body())))

app.mount("/", WSGIMiddleware(flask_app))
app.add_middleware(NativeRouteMetrics, routes=app.router.routes)
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
uvicorn.Server(config).run()
"""


def test_native_fastapi_routes_are_counted_once_by_path_template(tmp_path: Path) -> None:
    import socket

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"prometheus_multiproc_dir": str(metrics_dir), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-c", ASGI_SERVER, str(port)], env=env,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{url}/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        for path in ("model/MLmodel", "plots/a.png"):
            requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}", timeout=10)
        requests.put(f"{url}/api/2.0/mlflow-artifacts/artifacts/x/y", data=b"12", timeout=10)
        requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts/z", headers={"X-Refuse": "1"},
                     timeout=10)  # fmt: skip
        requests.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": "r1"}, timeout=10)
        requests.get(f"{url}/no/such", timeout=10)
        found = counts(metrics_dir)
    finally:
        process.terminate()
        process.wait(timeout=30)
    artifacts = "/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}"
    assert found == {
        ("GET", artifacts, "200"): 2.0,
        ("PUT", artifacts, "200"): 1.0,
        ("GET", artifacts, "401"): 1.0,  # refused by the middleware, before the route ran
        ("GET", "/api/2.0/mlflow/runs/get", "200"): 1.0,  # once: Flask's hooks, not the mount
        ("GET", "unmatched", "404"): 1.0,  # Flask's rule-less 404; /health is left out
    }
