"""The monitoring files (monitoring/): Prometheus' config and alert rules checked by promtool, every
alert unit-tested with `promtool test rules`, and Grafana's provisioning files and dashboards held
to the formats Grafana reads.

promtool is Debian's (`prometheus` package), put in the venv by scripts/install-promtool.sh, which
scripts/test.sh runs before this tier. Grafana itself cannot run here (no package, no image): its
files are checked for the structure Grafana's file provisioning and dashboard JSON model require,
and every panel's PromQL is parsed by promtool here and evaluated by a running Prometheus in the
Docker tier (tests/e2e/test_monitoring.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
CONFIG = MONITORING / "prometheus" / "prometheus.yml"
RULES = MONITORING / "prometheus" / "rules" / "mlstack.yml"
RULE_TESTS = MONITORING / "prometheus" / "tests" / "mlstack.test.yml"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "mlstack.yml"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
OVERLAY = REPO / "docker-compose.monitoring.yml"

# The alerts the platform promises (issue 10, docs/monitoring.md): each must exist.
REQUIRED_ALERTS = {
    "MlstackServingErrorRateHigh",
    "MlstackServingLatencyHigh",
    "MlstackServingModelLoadFailed",
    "MlstackServingModelStale",
    "MlstackTrackingErrorRateHigh",
    "MlstackPostgresDown",
    "MlstackArtifactStoreUnreachable",
}
# Grafana variables a panel query may use, with what the Docker tier and this test put instead.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def promtool() -> str:
    found = shutil.which("promtool", path=str(Path(sys.executable).parent)) or shutil.which(
        "promtool"
    )
    if found is None:
        pytest.fail(
            "promtool not found: run scripts/install-promtool.sh (scripts/test.sh does)",
            pytrace=False,
        )
    return found


def run_promtool(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for g in load_yaml(RULES)["groups"] for rule in g["rules"] if "alert" in rule]


def overlay_mounts(service: str) -> dict[str, str]:
    """{container path: repo-relative source} of the overlay's bind mounts for `service`."""
    mounts = {}
    for volume in load_yaml(OVERLAY)["services"][service]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


# --- Prometheus ---------------------------------------------------------------------------------
def test_promtool_accepts_the_config_with_the_rules_it_loads(tmp_path: Path) -> None:
    # As mounted in the container: the config's rule_files glob must find the rules file there.
    mounts = overlay_mounts("prometheus")
    assert mounts["/etc/prometheus/prometheus.yml"] == "monitoring/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "monitoring/prometheus/rules"
    config = load_yaml(CONFIG)
    (pattern,) = config["rule_files"]
    assert pattern.startswith("/etc/prometheus/rules/")
    assert list(RULES.parent.glob(pattern.removeprefix("/etc/prometheus/rules/"))) == [RULES]
    # Run promtool on a copy whose glob points at the repo's rules, so it checks them too, and
    # whose scrape token (generated at run time into a volume) is a file that exists here.
    config["rule_files"] = [str(RULES.parent / Path(pattern).name)]
    token = tmp_path / "scrape-token"
    token.write_text("0" * 64)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["serving"]["authorization"]["credentials_file"] = str(token)
    jobs["mlflow"]["basic_auth"]["password_file"] = str(token)
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = run_promtool("check", "config", local)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules()) + 1} rules found" in result.stdout, result.stdout
    # And the file as shipped (its token file exists only inside the container).
    result = run_promtool("check", "config", "--syntax-only", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_scraped() -> None:
    jobs = {job["job_name"]: job for job in load_yaml(CONFIG)["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets == {
        "serving": ["serving:5001"],
        "mlflow": ["mlflow:5000"],
        "postgres": ["postgres-exporter:9187"],
        "minio": ["minio:9000"],
        "prometheus": ["localhost:9090"],
    }
    assert jobs["minio"]["metrics_path"] == "/minio/v2/metrics/cluster"


def test_prometheus_logs_in_with_the_generated_scrape_token() -> None:
    # One configuration for both modes: serving and mlflow get credentials always (without the
    # auth overlay they ignore them; the Docker tier runs both modes with this same file).
    from mlstack.tracking_app import MONITORING_USER

    jobs = {job["job_name"]: job for job in load_yaml(CONFIG)["scrape_configs"]}
    overlay = load_yaml(OVERLAY)["services"]
    mount = "/run/mlstack-monitoring"
    token = f"{mount}/scrape-token"
    assert jobs["serving"]["authorization"] == {"type": "Bearer", "credentials_file": token}
    assert jobs["mlflow"]["basic_auth"] == {"username": MONITORING_USER, "password_file": token}
    # The volume the token lives in: written by the one-shot init only, read-only elsewhere.
    for name in ("prometheus", "serving", "mlflow"):
        assert f"monitoring-token:{mount}:ro" in overlay[name]["volumes"], name
        assert overlay[name]["depends_on"]["monitoring-init"] == {
            "condition": "service_completed_successfully"
        }, name
    assert overlay["monitoring-init"]["volumes"] == [f"monitoring-token:{mount}"]
    assert overlay["monitoring-init"]["network_mode"] == "none"
    assert overlay["serving"]["environment"]["MLSTACK_SERVE_METRICS_TOKENS_FILE"] == token
    assert overlay["mlflow"]["environment"]["MLSTACK_MONITORING_TOKEN_FILE"] == token
    # No token in any environment or command: only the file's path.
    assert "scrape-token" not in json.dumps(overlay["prometheus"].get("command", []))


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_for_severity_summary_and_description() -> None:
    rules = alerting_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[mh]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert len(rule["annotations"]["summary"]) > 20, name
        assert len(rule["annotations"]["description"]) > 60, name


def test_every_alert_has_a_promtool_case_that_fires_and_one_that_does_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert fires == alerts
    assert silent == alerts


def test_promtool_test_rules_passes() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_test_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    # The rule tests are not vacuous: with the 5xx threshold raised, the firing case fails.
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    broken = RULES.read_text().replace(") > 0.05\n", ") > 0.5\n", 1)
    assert broken != RULES.read_text()
    (rules_dir / RULES.name).write_text(broken)
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    shutil.copy(RULE_TESTS, tests_dir / RULE_TESTS.name)
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tests_dir)
    assert result.returncode != 0
    assert "MlstackServingErrorRateHigh" in result.stdout + result.stderr


# --- Grafana provisioning -----------------------------------------------------------------------
def test_datasource_provisioning_format() -> None:
    document = load_yaml(DATASOURCES)
    assert document["apiVersion"] == 1
    assert set(document) <= {"apiVersion", "datasources", "deleteDatasources", "prune"}
    (source,) = document["datasources"]
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"  # the browser never talks to Prometheus itself
    assert source["url"] == "http://prometheus:9090"  # the overlay's service and port
    assert source["uid"] == "mlstack-prometheus"
    assert source["isDefault"] is True
    assert isinstance(source["jsonData"], dict)


def test_dashboard_provisioning_points_at_the_mounted_dashboards() -> None:
    document = load_yaml(PROVIDERS)
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert isinstance(provider["orgId"], int)
    mounts = overlay_mounts("grafana")
    assert mounts[provider["options"]["path"]] == "monitoring/grafana/dashboards"
    grafana = load_yaml(OVERLAY)["services"]["grafana"]
    provisioning = grafana["environment"]["GF_PATHS_PROVISIONING"]
    assert mounts[provisioning] == "monitoring/grafana/provisioning"


# --- Grafana dashboards -------------------------------------------------------------------------
def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every panel target."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                found.append((dashboard["uid"], panel["title"], target["expr"]))
    return found


def test_there_is_a_dashboard_per_component() -> None:
    uids = {json.loads(p.read_text())["uid"]: p.stem for p in DASHBOARDS}
    assert uids == {
        "mlstack-serving": "serving",
        "mlstack-tracking": "tracking",
        "mlstack-stores": "stores",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_model(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    # What file provisioning needs: a stable uid (<= 40 characters), a title, a schema version;
    # no numeric id (Grafana assigns it).
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard.get("id") is None
    assert isinstance(dashboard["time"]["from"], str)
    assert isinstance(dashboard["templating"]["list"], list)
    panels = panels_of(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        title = panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, title
        assert grid["y"] >= 0 and grid["h"] > 0, title
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & occupied, f"{title} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat", "table", "gauge", "bargauge"), title
        assert panel["description"], title
        assert panel["datasource"] == {"type": "prometheus", "uid": "mlstack-prometheus"}, title
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
            assert target["expr"].strip(), title


def test_dashboards_use_the_provisioned_datasource_only() -> None:
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    for path in DASHBOARDS:
        uids = set(re.findall(r'"uid":\s*"([^"]+)"', path.read_text()))
        assert uids == {uid, json.loads(path.read_text())["uid"]}, path.name


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule's expression: a syntax error fails here,
    # before any Prometheus runs. (The Docker tier then evaluates each against live data.)
    rules = []
    for index, (uid, title, expr) in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{uid} / {title}: unknown variable in {expr}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    assert len(rules) >= 25
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_dashboard_shows_what_the_issue_asks() -> None:
    serving = json.loads((MONITORING / "grafana/dashboards/serving.json").read_text())
    exprs = " ".join(t["expr"] for p in panels_of(serving) for t in p.get("targets", []))
    for needle in (
        "rate(mlstack_serving_requests_total",  # requests/s
        "histogram_quantile(0.5,",  # p50
        "histogram_quantile(0.99,",  # p99
        'status=~"[45].."',  # errors by code
        "mlstack_serving_model_info",  # per model and version
    ):
        assert needle in exprs, needle


# --- Kubernetes ---------------------------------------------------------------------------------
def test_kubernetes_reuses_the_same_files() -> None:
    kustomization = load_yaml(MONITORING / "kustomization.yaml")
    files = {f for gen in kustomization["configMapGenerator"] for f in gen["files"]}
    assert files == {str(p.relative_to(MONITORING)) for p in (*DASHBOARDS, RULES)}, (
        "every dashboard and the rules, from the one copy Compose mounts"
    )
    dashboards = next(
        g for g in kustomization["configMapGenerator"] if g["name"] == "mlstack-grafana-dashboards"
    )
    assert dashboards["options"]["labels"]["grafana_dashboard"] == "1"
