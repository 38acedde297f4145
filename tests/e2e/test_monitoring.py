"""The monitoring overlay (docker-compose.monitoring.yml) on the real compose stack, project
`mlstack-e2e-monitoring`, with two serving workers: every scrape target up; after traffic (a training
run, /invocations answered and refused) every Grafana panel's query, evaluated by the running
Prometheus, returns series; one scrape counts the requests of both serving workers; the alert
rules are loaded, and MlstackPostgresDown fires when PostgreSQL stops. No auth overlay here: the
targets are up although Prometheus sends the scrape token (plain MLflow and serving ignore the
Authorization header); tests/e2e/test_auth.py runs the same configuration with auth.

Offline, Prometheus and postgres_exporter are the Debian-package stand-ins
(tests/e2e/compose.monitoring.offline.yml) and Grafana is not started: it has no stand-in, so its
queries are evaluated here by Prometheus itself, and its files are checked for Grafana's formats
in tests/unit/test_monitoring_files.py. `test_overlay_config` needs only the compose CLI.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
ONLINE = os.environ.get("MLSTACK_E2E_ONLINE", "").lower() in ("1", "true", "yes")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROMETHEUS_PORT = _free_port()
COMPOSE_PROJECT = "mlstack-e2e-monitoring"
COMPOSE_OVERLAYS = (
    "docker-compose.monitoring.yml",
    *(() if ONLINE else ("tests/e2e/compose.monitoring.offline.yml",)),
)
STACK_ENV = {
    "PROMETHEUS_BIND": f"127.0.0.1:{PROMETHEUS_PORT}",
    "GRAFANA_BIND": f"127.0.0.1:{_free_port()}",
    "SERVING_WORKERS": "2",
}
PROMETHEUS = f"http://127.0.0.1:{PROMETHEUS_PORT}"
JOBS = {"serving", "mlflow", "postgres", "minio", "prometheus"}
DASHBOARDS = sorted((REPO / "monitoring/grafana/dashboards").glob("*.json"))
# Grafana's variables, as Grafana would expand them at a 15 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
SCRAPE_WAIT_SECONDS = 150  # scrapes every 15 s; the machine is shared and slow


def query(expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=30)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def scalar(expr: str) -> float | None:
    result = query(expr)
    return float(result[0]["value"][1]) if result else None


def panel_queries() -> list[tuple[str, str]]:
    """(dashboard / panel title, PromQL with Grafana's variables expanded) for every target."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((f"{dashboard['title']} / {panel['title']}", expr))
    return found


# --- the overlay as compose renders it (compose CLI only) -----------------------------------
def compose_config() -> dict[str, Any]:
    own = ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "PROMETHEUS_BIND",
           "GRAFANA_BIND", "PROMETHEUS_IMAGE", "GRAFANA_IMAGE", "POSTGRES_EXPORTER_IMAGE")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in own}
    result = subprocess.run(
        ["docker", "compose", "-p", "mlstack-config-check", "-f", "docker-compose.yml",
         "-f", "docker-compose.monitoring.yml", "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_overlay_config() -> None:
    config = compose_config()
    services = config["services"]
    published = {
        (name, str(port["target"])): (port.get("host_ip"), str(port.get("published")))
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    assert published == {
        ("mlflow", "5000"): ("127.0.0.1", "5000"),
        ("serving", "5001"): ("127.0.0.1", "5001"),
        ("minio", "9001"): ("127.0.0.1", "9001"),
        ("prometheus", "9090"): ("127.0.0.1", "9090"),
        ("grafana", "3000"): ("127.0.0.1", "3000"),
    }
    # The token's one-shot writer: root only for the fresh volume, and nothing else.
    init = services["monitoring-init"]
    assert init["security_opt"] == ["no-new-privileges:true"]
    assert init["cap_drop"] == ["ALL"] and init["read_only"] is True
    assert init["network_mode"] == "none" and init["restart"] == "no"
    for name in ("prometheus", "grafana", "postgres-exporter"):
        service = services[name]
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["read_only"] is True, name
        assert service["user"] not in ("", "0", "root"), name
        assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"]), name
        assert "healthcheck" in service, name
        assert all(v.get("read_only") for v in service["volumes"] if v["type"] == "bind"), name
    # Exact upstream releases, never a floating tag.
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(
        r"quay\.io/prometheuscommunity/postgres-exporter:v\d+\.\d+\.\d+",
        services["postgres-exporter"]["image"],
    )
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    # Grafana reaches Prometheus only; the exporter sits with the stores it reads.
    assert set(services["grafana"]["networks"]) == {"monitoring"}
    assert set(services["postgres-exporter"]["networks"]) == {"stores"}
    assert set(services["prometheus"]["networks"]) == {"default", "stores", "monitoring"}
    # The switches that make the platform scrapeable.
    assert services["mlflow"]["environment"]["MLFLOW_EXPOSE_PROMETHEUS"].startswith("/tmp/")
    assert services["minio"]["environment"]["MINIO_PROMETHEUS_AUTH_TYPE"] == "public"
    # Telemetry off, no sign-up, no anonymous access; the admin password comes from docker.env.
    grafana = services["grafana"]["environment"]
    for key in ("GF_ANALYTICS_REPORTING_ENABLED", "GF_ANALYTICS_CHECK_FOR_UPDATES",
                "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES", "GF_NEWS_NEWS_FEED_ENABLED",
                "GF_USERS_ALLOW_SIGN_UP", "GF_AUTH_ANONYMOUS_ENABLED"):  # fmt: skip
        assert grafana[key] == "false", key
    for key in ("GF_PLUGINS_PREINSTALL_DISABLED", "GF_SECURITY_DISABLE_GRAVATAR",
                "GF_PLUGINS_PUBLIC_KEY_RETRIEVAL_DISABLED"):  # fmt: skip
        assert grafana[key] == "true", key
    docker_env = (REPO / "docker.env").read_text()
    assert re.search(r"# CHANGEME[^\n]*\nGF_SECURITY_ADMIN_PASSWORD=changeme-", docker_env)


# --- the running stack ------------------------------------------------------------------------
def wait_for(what: str, check: Any, seconds: float = SCRAPE_WAIT_SECONDS) -> Any:
    """Call `check` until it returns (True, value); return that value. Fails with the last one."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        try:
            done, last = check()
            if done:
                return last
        except (requests.RequestException, AssertionError, KeyError, ValueError) as error:
            last = error
        time.sleep(3)
    pytest.fail(f"{what}: not within {seconds} s; last: {last}", pytrace=False)


def test_every_scrape_target_is_up(stack: Any) -> None:
    def health() -> Any:
        targets = requests.get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()
        states = {
            t["labels"]["job"]: (t["health"], t.get("lastError", ""))
            for t in targets["data"]["activeTargets"]
        }
        return {job: state[0] for job, state in states.items()} == dict.fromkeys(JOBS, "up"), states

    wait_for("every scrape target up", health)
    # Up with the credentials sent: the running configuration logs in to serving and mlflow, which
    # ignore the header without the auth overlay.
    running = requests.get(f"{PROMETHEUS}/api/v1/status/config", timeout=10).json()["data"]["yaml"]
    assert "credentials_file: /run/mlstack-monitoring/scrape-token" in running
    assert "password_file: /run/mlstack-monitoring/scrape-token" in running
    # And each exporter really reaches what it watches, not just its own HTTP port.
    assert scalar("pg_up") == 1.0
    assert scalar('minio_cluster_nodes_online_total{job="minio"}') == 1.0


def test_after_traffic_every_dashboard_panel_returns_series(stack: Any) -> None:
    result = stack.train("linear_model")
    stack.assert_trained(result)
    version = stack.champion_versions()["linear_model"]
    stack.wait_for_version(version)
    payload = stack.diabetes_payload()
    for _ in range(20):
        assert stack.invoke(payload).status_code == 200
        assert stack.invoke(payload, "/models/linear_model/invocations").status_code == 200
    # Refused requests too: the "errors by code" panels need some.
    for _ in range(5):
        answer = requests.post(
            f"{stack.serving_url}/invocations",
            data=b"{nope",
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 400
    assert requests.get(f"{stack.mlflow_url}/api/2.0/mlflow/runs/get?run_id=nope",
                        timeout=30).status_code == 404  # fmt: skip

    queries = panel_queries()
    assert len(queries) >= 25

    def empty_panels() -> Any:
        empty = [(title, expr) for title, expr in queries if not query(expr)]
        return not empty, empty

    wait_for("every panel's query returning series", empty_panels)
    # The values mean what the panels say: the served version is the registry's champion.
    served = query(
        'max by (model, name, version) (mlstack_serving_model_info{model="default"}) == 1'
    )
    assert [(s["metric"]["name"], s["metric"]["version"]) for s in served] == [
        ("linear_model", version)
    ]
    assert scalar('max(mlstack_registry_alias_version{name="linear_model",alias="champion"})') == (
        float(version)
    )
    assert (scalar('sum(mlstack_tracking_runs{status="FINISHED"})') or 0) >= 1
    # Per endpoint: the URL rule, not the raw path (the run id "nope" is no label value).
    missing = (
        'mlstack_tracking_http_request_duration_seconds_count{route="/api/2.0/mlflow/runs/get"}'
    )

    # The 404 above reaches Prometheus with the next scrape (every 15 s), which the panels' wait
    # does not always include: wait for it too.
    def refused_counted() -> Any:
        statuses = {s["metric"]["status"] for s in query(f"sum by (status) ({missing})")}
        return "404" in statuses, statuses

    wait_for("the 404 of runs/get counted under its URL rule", refused_counted)
    assert not query('{__name__=~"mlstack_tracking_.*", route=~".*nope.*"}')


def test_one_scrape_counts_every_serving_worker(stack: Any) -> None:
    counted = 'sum(mlstack_serving_requests_total{job="serving", route="/invocations"})'

    def settled() -> Any:  # two consecutive scrapes agree: no request in flight
        first = scalar(counted)
        time.sleep(16)
        return first is not None and first == scalar(counted), first

    before = wait_for("a settled request count", settled)
    sent = 60
    payload = stack.diabetes_payload()
    for _ in range(sent):  # a new connection each: the kernel spreads them over the workers
        with requests.Session() as session:
            answer = session.post(f"{stack.serving_url}/invocations", json=payload, timeout=30)
            assert answer.status_code == 200

    def all_counted() -> Any:
        now = scalar(counted)
        return now == before + sent, now

    wait_for(f"Prometheus counting all {sent} requests (from {before})", all_counted)
    # Both workers wrote samples: one counter file per worker process in the shared directory.
    listing = stack.compose(
        "exec", "-T", "serving", "sh", "-c", "ls /tmp/mlstack-serve-metrics-*/"
    ).stdout
    assert len(set(re.findall(r"counter_(\d+)\.db", listing))) >= 2, listing


def test_s3_metrics_need_public_auth_type(stack: Any) -> None:
    # The S3 store's image (the stand-in offline, pgsty/silo online), run twice on its own with no
    # network: an unauthenticated scrape is refused (403) unless MINIO_PROMETHEUS_AUTH_TYPE=public.
    image = json.loads(stack.compose("config", "--format", "json").stdout)["services"]["minio"][
        "image"
    ]
    probe = (
        "for i in $(seq 60); do code=$(curl -s -o /dev/null -w '%{http_code}' "
        "http://127.0.0.1:9000/minio/v2/metrics/cluster); "
        'case $code in 200|403) echo $code; exit 0;; esac; sleep 1; done; echo "$code"'
    )
    for auth_type, expected in (("jwt", "403"), ("public", "200")):
        name = f"{COMPOSE_PROJECT}-s3-metrics-{auth_type}-{os.getpid()}"
        subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", "none",
                        "-e", f"MINIO_PROMETHEUS_AUTH_TYPE={auth_type}", image, "server", "/data"],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        try:
            # The stand-in writes the metrics object a few seconds after start: wait for 200/403.
            code = subprocess.run(["docker", "exec", name, "sh", "-c", probe],
                                  capture_output=True, text=True, timeout=120,
                                  check=False).stdout.strip()  # fmt: skip
            assert code == expected, (auth_type, code)
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60,
                           check=False)  # fmt: skip


def test_alert_rules_are_loaded(stack: Any) -> None:
    rules = requests.get(f"{PROMETHEUS}/api/v1/rules", timeout=10).json()["data"]["groups"]
    alerts = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert {"MlstackServingErrorRateHigh", "MlstackServingLatencyHigh",
            "MlstackServingModelLoadFailed", "MlstackServingModelStale",
            "MlstackTrackingErrorRateHigh", "MlstackPostgresDown",
            "MlstackArtifactStoreUnreachable"} <= alerts  # fmt: skip
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    # Healthy stack: nothing fires.
    firing = requests.get(f"{PROMETHEUS}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert [a for a in firing if a["state"] == "firing"] == []


def test_postgres_down_fires_its_alert(stack: Any) -> None:
    stack.compose("stop", "postgres", timeout=120)
    try:

        def firing() -> Any:
            alerts = requests.get(f"{PROMETHEUS}/api/v1/alerts", timeout=10).json()
            states = {a["labels"]["alertname"]: a["state"] for a in alerts["data"]["alerts"]}
            return states.get("MlstackPostgresDown") == "firing", states

        wait_for("MlstackPostgresDown firing", firing, seconds=240)
        assert scalar("pg_up") == 0.0
    finally:
        stack.compose("start", "postgres", timeout=120)
    wait_for("pg_up back to 1", lambda: (scalar("pg_up") == 1.0, scalar("pg_up")))
