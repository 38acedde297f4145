"""What `docker compose config` says about the stack's exposure and hardening, with no `.env` and
none of the developer's variables: exactly the three documented ports, all on 127.0.0.1; nothing
on PostgreSQL or the S3 API; no capabilities; read-only and non-root where docs/reliability-security.md says.
Checked for docker-compose.yml alone and with the auth overlay. Needs the compose CLI only (no
engine, no images), so it takes about a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
# Interpolation variables the test must not inherit (it checks the defaults).
OWN_VARS = (
    "COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "MLFLOW_BIND", "SERVING_BIND",
    "MINIO_CONSOLE_BIND", "POSTGRES_IMAGE", "MINIO_IMAGE", "PYTHON_IMAGE",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "SERVING_TOKENS_FILE",
)  # fmt: skip
PUBLISHED = {"mlflow": "5000", "serving": "5001", "minio": "9001"}
WRITABLE_ROOT = {"postgres", "minio"}
AS_ROOT = {"minio"}  # the image's user; no capabilities


def compose_config(*overlays: str, **env: str) -> dict[str, Any]:
    files = [arg for f in ("docker-compose.yml", *overlays) for arg in ("-f", f)]
    clean = {k: v for k, v in os.environ.items() if k not in OWN_VARS}
    result = subprocess.run(
        ["docker", "compose", "-p", "mlstack-config-check", *files, "--profile", "train",
         "config", "--format", "json"],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


AUTH_ENV = {
    "MLFLOW_TRACKING_USERNAME": "someone",
    "MLFLOW_TRACKING_PASSWORD": "a-password-here",
    "SERVING_TOKENS_FILE": "/etc/mlstack/serving-tokens",
}
VARIANTS = {"default": ((), {}), "auth": (("docker-compose.auth.yml",), AUTH_ENV)}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    overlays, env = VARIANTS[request.param]
    return compose_config(*overlays, **env)


def test_only_the_three_documented_ports_on_loopback(config: dict[str, Any]) -> None:
    published = {
        (name, str(port["target"])): (port.get("host_ip"), str(port.get("published")))
        for name, service in config["services"].items()
        for port in service.get("ports", [])
    }
    assert published == {
        ("mlflow", "5000"): ("127.0.0.1", "5000"),
        ("serving", "5001"): ("127.0.0.1", "5001"),
        ("minio", "9001"): ("127.0.0.1", "9001"),
    }
    # PostgreSQL and the S3 API: reachable only inside the compose network.
    assert "ports" not in config["services"]["postgres"]
    assert all(str(p["target"]) != "9000" for p in config["services"]["minio"]["ports"])
    # ... and only on the stores network, which serving and the trainers are not on.
    for name, service in config["services"].items():
        on_stores = "stores" in (service.get("networks") or {})
        assert on_stores == (name in {"postgres", "minio", "mlflow", "create-bucket"}), name


def test_every_service_is_hardened(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        assert service.get("security_opt") == ["no-new-privileges:true"], name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("cap_add"), name
        assert not service.get("privileged"), name
        assert bool(service.get("read_only")) == (name not in WRITABLE_ROOT), name
        if name not in WRITABLE_ROOT:
            assert any(t.split(":")[0] == "/tmp" for t in service.get("tmpfs", [])), name
        if name not in AS_ROOT:
            # Built images set USER 10001 in their Dockerfile; postgres needs it said here.
            assert service.get("user") or "build" in service, name


def test_the_warning_gets_the_published_addresses(config: dict[str, Any]) -> None:
    env = config["services"]["mlflow"]["environment"]
    assert env["MLSTACK_MLFLOW_BIND"] == "127.0.0.1:5000"
    assert env["MLSTACK_SERVING_BIND"] == "127.0.0.1:5001"
    assert env["MLSTACK_MINIO_CONSOLE_BIND"] == "127.0.0.1:9001"


def test_a_moved_bind_moves_both_port_and_warning_input() -> None:
    config = compose_config(MLFLOW_BIND="0.0.0.0:5100")
    (port,) = config["services"]["mlflow"]["ports"]
    assert (port["host_ip"], str(port["published"])) == ("0.0.0.0", "5100")
    assert config["services"]["mlflow"]["environment"]["MLSTACK_MLFLOW_BIND"] == "0.0.0.0:5100"


def test_auth_mode_gives_clients_their_login_only() -> None:
    config = compose_config("docker-compose.auth.yml", **AUTH_ENV)
    assert config["services"]["mlflow"]["environment"]["MLSTACK_AUTH"] == "basic"
    for name in ("serving", "linear_model_trainer", "logistic_model_trainer",
                 "random_forest_model_trainer"):  # fmt: skip
        service = config["services"][name]
        env = service["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == "someone", name
        assert env["MLFLOW_TRACKING_PASSWORD"] == "a-password-here", name
        assert not service.get("env_file"), name  # no docker.env: no S3 or database secrets
    # Serving's bearer tokens: a Compose secret (a file), never a variable's value.
    serving = config["services"]["serving"]
    assert serving["environment"]["MLSTACK_SERVE_TOKENS_FILE"] == "/run/secrets/serving_tokens"
    assert [s["source"] for s in serving["secrets"]] == ["serving_tokens"]
    assert config["secrets"]["serving_tokens"]["file"] == "/etc/mlstack/serving-tokens"
    # Without the login, compose refuses to run anything in auth mode, naming what is missing.
    # (Compose names only the first missing variable it meets, in no fixed order: leave out one
    # at a time.)
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.auth.yml"]
    clean = {k: v for k, v in os.environ.items() if k not in OWN_VARS}
    for missing in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "SERVING_TOKENS_FILE"):
        env = clean | {k: v for k, v in AUTH_ENV.items() if k != missing}
        result = subprocess.run(
            ["docker", "compose", *files, "config", "-q"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0, missing
        assert missing in result.stderr, result.stderr


def test_images_are_exact_releases_and_one_python_base() -> None:
    config = compose_config()
    images = {name: s["image"] for name, s in config["services"].items() if "build" not in s}
    # Upstream images: a patch release or a dated release tag, never a floating one.
    assert re.fullmatch(r"postgres:17\.\d+-bookworm", images.pop("postgres"))
    assert re.fullmatch(r"pgsty/silo:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images.pop("minio"))
    assert not images
    # Built images: every build gets the same base, and it is the one both Dockerfiles default
    # to, so `docker build` and `docker compose build` produce the same thing.
    bases = {
        s["build"]["args"]["PYTHON_IMAGE"] for s in config["services"].values() if "build" in s
    }
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base)
    for dockerfile in ("Dockerfile", "Dockerfile.mlflow"):
        assert f"ARG PYTHON_IMAGE={base}\n" in (REPO / dockerfile).read_text(), dockerfile
