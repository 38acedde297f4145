"""The tracking server's switches for its own routes: MLSTACK_RUNS_SEARCH (mlstack/runs_search.py)
and MLSTACK_RUN_WRITES (mlstack/run_writes.py), each `sql` (the default) or `mlflow`, read the same
way by the app (tracking_app.create_app) and by the image's entrypoint (docker/mlflow-server.sh)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mlstack.run_writes import enabled as run_writes_enabled
from mlstack.tracking_app import runs_search_enabled

SWITCHES: list[tuple[str, Callable[[str | None], bool]]] = [
    ("MLSTACK_RUNS_SEARCH", runs_search_enabled),
    ("MLSTACK_RUN_WRITES", run_writes_enabled),
]


@pytest.mark.parametrize(("name", "read"), SWITCHES)
@pytest.mark.parametrize(("value", "on"), [(None, True), ("", True), ("sql", True),
                                           ("mlflow", False)])  # fmt: skip
def test_each_route_can_be_switched_off(name: str, read: Callable[[str | None], bool],
                                        value: str | None, on: bool) -> None:  # fmt: skip
    assert read(value) is on


@pytest.mark.parametrize(("name", "read"), SWITCHES)
def test_a_misspelt_switch_stops_the_server(name: str, read: Callable[[str | None], bool]) -> None:
    with pytest.raises(ValueError, match=f"{name} must be sql or mlflow, not 'off'"):
        read("off")
    with pytest.raises(ValueError, match="not 'SQL'"):
        read("SQL")  # as docker/mlflow-server.sh checks it: exactly sql or mlflow


@pytest.mark.parametrize(("name", "read"), SWITCHES)
def test_the_image_entrypoint_refuses_a_misspelt_switch_before_the_database(
    name: str, read: Callable[[str | None], bool]
) -> None:
    """docker/mlflow-server.sh (Compose and the chart) says it and exits 2 before it waits for
    PostgreSQL (none answers here)."""
    script = Path(__file__).resolve().parents[2] / "docker" / "mlflow-server.sh"
    env = {"PATH": "/usr/bin:/bin", "POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p",
           "POSTGRES_DB": "d", name: "off"}  # fmt: skip
    result = subprocess.run(["sh", str(script), "--host=0.0.0.0"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{name} must be sql or mlflow, not 'off'" in result.stderr
