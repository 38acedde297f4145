"""The start-up warning of docker/mlflow-server.sh (`mlflow-server --check-defaults`), run with sh
and a made-up environment: nothing is published, no container starts.

It must warn when a docker.env credential still holds its CHANGEME default and any published
address is beyond loopback, and when MLflow is published beyond loopback without a login; and stay
silent on loopback-only stacks and on changed credentials.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "mlflow-server.sh"
LOOPBACK = {
    "MLSTACK_MLFLOW_BIND": "127.0.0.1:5000",
    "MLSTACK_SERVING_BIND": "127.0.0.1:5001",
    "MLSTACK_MINIO_CONSOLE_BIND": "127.0.0.1:9001",
}


def docker_env() -> dict[str, str]:
    values = {}
    for line in (REPO / "docker.env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def changed(env: dict[str, str]) -> dict[str, str]:
    """docker.env with every CHANGEME default replaced."""
    return {k: ("s3cret-" + k.lower() if "changeme" in v.lower() else v) for k, v in env.items()}


def check(env: dict[str, str]) -> str:
    """stderr of `mlflow-server --check-defaults` (it always exits 0 and prints nothing else)."""
    result = subprocess.run(
        [shutil.which("sh") or "/bin/sh", str(SCRIPT), "--check-defaults"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr


def test_loopback_only_stays_silent_even_with_defaults() -> None:
    assert check({**docker_env(), **LOOPBACK}) == ""


@pytest.mark.parametrize(
    ("variable", "bind"),
    [
        ("MLSTACK_MLFLOW_BIND", "0.0.0.0:5000"),
        ("MLSTACK_SERVING_BIND", "192.168.1.20:5001"),
        ("MLSTACK_MINIO_CONSOLE_BIND", "9001"),  # a bare port: Docker publishes on every address
        ("MLSTACK_SERVING_BIND", "[::]:5001"),
    ],
)
def test_defaults_beyond_loopback_warn_naming_them(variable: str, bind: str) -> None:
    stderr = check({**docker_env(), **LOOPBACK, variable: bind})
    line = next(line for line in stderr.splitlines() if "default credentials" in line)
    assert line.startswith("WARNING: ")
    assert bind in line
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert name in line
    # Auth is off: its CHANGEME defaults are not in use, so not named.
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in line


@pytest.mark.parametrize("bind", ["127.0.0.1:5000", "127.0.0.53:5000", "[::1]:5000"])
def test_loopback_spellings_count_as_loopback(bind: str) -> None:
    assert check({**docker_env(), **LOOPBACK, "MLSTACK_MLFLOW_BIND": bind}) == ""


def test_mlflow_beyond_loopback_without_auth_warns_even_with_new_credentials() -> None:
    stderr = check({**changed(docker_env()), **LOOPBACK, "MLSTACK_MLFLOW_BIND": "0.0.0.0:5000"})
    assert "default credentials" not in stderr
    assert "WARNING: the MLflow UI/API is published on 0.0.0.0:5000 without authentication" in (
        stderr
    )


def test_auth_mode_names_its_own_defaults_and_drops_the_no_login_warning() -> None:
    env = {
        **docker_env(),
        **LOOPBACK,
        "MLSTACK_AUTH": "basic",
        "MLSTACK_MLFLOW_BIND": "0.0.0.0:5000",
    }
    stderr = check(env)
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in stderr and "MLFLOW_FLASK_SERVER_SECRET_KEY" in stderr
    assert "without authentication" not in stderr


def test_everything_changed_and_auth_on_is_silent() -> None:
    env = {**changed(docker_env()), **LOOPBACK, "MLSTACK_AUTH": "basic"}
    env["MLSTACK_MLFLOW_BIND"] = "0.0.0.0:5000"
    assert check(env) == ""


def test_every_changeme_secret_of_docker_env_is_checked() -> None:
    """docker.env and the script stay in step: each `# CHANGEME` secret has a default containing
    "changeme" (what the script looks for) and is in the script's lists."""
    text = SCRIPT.read_text()
    checked = set()
    for name in ("DEFAULT_CREDENTIALS", "AUTH_CREDENTIALS", "MONITORING_CREDENTIALS"):
        match = re.search(rf'^{name}="([^"]*)"', text, re.M)
        assert match, name
        checked |= set(match.group(1).split())
    lines = (REPO / "docker.env").read_text().splitlines()
    marked = []
    for index, line in enumerate(lines):
        if line.startswith("# CHANGEME"):
            following = next(x for x in lines[index + 1 :] if not x.startswith("#"))
            marked.append(following.split("=", 1))
    secrets = {k: v for k, v in marked if not k.endswith(("_USER", "_ACCESS_KEY_ID"))}
    assert secrets, marked
    for key, value in secrets.items():
        assert "changeme" in value.lower(), key
        assert key in checked, key


def test_monitoring_overlay_adds_grafana_and_prometheus() -> None:
    monitoring = {
        "MLSTACK_GRAFANA_BIND": "127.0.0.1:3000",
        "MLSTACK_PROMETHEUS_BIND": "127.0.0.1:9090",
    }
    assert check({**docker_env(), **LOOPBACK, **monitoring}) == ""
    # Grafana published beyond loopback with its CHANGEME password: named.
    stderr = check({**docker_env(), **LOOPBACK, **monitoring, "MLSTACK_GRAFANA_BIND": "3000"})
    assert "GF_SECURITY_ADMIN_PASSWORD" in stderr and "(3000)" in stderr
    # Prometheus (no login of its own) beyond loopback counts as exposure too.
    stderr = check(
        {**docker_env(), **LOOPBACK, **monitoring, "MLSTACK_PROMETHEUS_BIND": "0.0.0.0:9090"}
    )
    assert "0.0.0.0:9090" in stderr
    # Without the overlay, Grafana's password is not in use: not named.
    stderr = check({**docker_env(), **LOOPBACK, "MLSTACK_SERVING_BIND": "0.0.0.0:5001"})
    assert "POSTGRES_PASSWORD" in stderr and "GF_SECURITY_ADMIN_PASSWORD" not in stderr
