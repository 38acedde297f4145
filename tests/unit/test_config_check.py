"""docker/config-check.sh (the `config-check` service), run with sh on made-up environments: the
shipped docker.env passes, and each value the stores would refuse fails with exit 2, naming its
variable. (tests/e2e/test_upstream_images.py runs it inside compose.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "config-check.sh"


def docker_env() -> dict[str, str]:
    values = {}
    for line in (REPO / "docker.env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_the_shipped_docker_env_passes() -> None:
    result = check(docker_env())
    assert result.returncode == 0, result.stderr
    assert "docker.env passes" in result.stdout


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"MINIO_ROOT_USER": "ab"}, "MINIO_ROOT_USER (docker.env) is 2 characters long"),
        ({"MINIO_ROOT_PASSWORD": "1234567"}, "MINIO_ROOT_PASSWORD (docker.env) is 7 characters"),
        ({"MINIO_ROOT_USER": ""}, "MINIO_ROOT_USER (docker.env) is 0 characters long"),
        ({"MINIO_ROOT_USER": None}, "MINIO_ROOT_USER is not set but MINIO_ROOT_PASSWORD is"),
        ({"POSTGRES_PASSWORD": ""}, "POSTGRES_PASSWORD (docker.env) is empty"),
    ],
)
def test_a_value_the_stores_refuse_fails_naming_it(
    changes: dict[str, str | None], named: str
) -> None:
    env = docker_env()
    for key, value in changes.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    result = check(env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr, result.stderr


def test_the_boundaries_are_the_servers() -> None:
    # 3 and 8 are allowed: MinIO's minimums themselves.
    result = check({**docker_env(), "MINIO_ROOT_USER": "abc", "MINIO_ROOT_PASSWORD": "12345678"})
    assert result.returncode == 0, result.stderr
