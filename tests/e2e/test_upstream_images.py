"""What the real upstream images do that a lenient stand-in would hide (issue 8), shown on the
engine the way a user meets it: `docker compose up` of parts of docker-compose.yml, with small
test overlays written to tmp_path.

- PostgreSQL on a fresh volume first runs a socket-only server (listen_addresses=''). The
  healthcheck must stay unhealthy through that phase and turn healthy once TCP 5432 accepts; a
  slow init script holds the phase open long enough to sample it.
- The tracking server waits for the database within MLSTACK_DB_WAIT_SECONDS: it gives up naming
  host and port when none comes, and carries on to `mlflow db upgrade` when one comes late.
- MinIO/Silo refuses a root user under 3 characters or a password under 8: `up` stops at the
  config-check service, naming the variable; the server itself refuses too (with --no-deps).
- A typo in minio's `command:` flags or in the `mc ready` healthcheck makes `up` fail.

Offline these run against tests/e2e's stand-ins, which copy the real behaviour and messages;
with MLSTACK_E2E_ONLINE=1 the same assertions run against postgres, python and pgsty/silo
themselves (the messages asserted are the upstream ones).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.docker

COMPOSE_PROJECT = "mlstack-e2e-images-gaps"
SLOW_INIT_SECONDS = 25  # the socket-only phase, held open by an init script
PG_SAMPLE_DEADLINE = 180
WAIT_SECONDS = 8  # MLSTACK_DB_WAIT_SECONDS for the give-up test
UP_FAIL_TIMEOUT = 90  # `up --wait` that must fail: its --wait-timeout
SHORT_USER_HINT = (
    "MINIO_ROOT_USER length should be at least 3, and MINIO_ROOT_PASSWORD length at least 8"
)


def overlay(tmp_path: Path, name: str, services: dict[str, Any]) -> str:
    """A compose override file (JSON is YAML) with absolute paths only."""
    path = tmp_path / f"{name}.yml"
    path.write_text(json.dumps({"services": services}, indent=2))
    return str(path)


def built(make: Callable[..., Stack], *overlays: str) -> Stack:
    """A Stack on fresh volumes whose platform image (config-check, mlflow) is built."""
    stack = make(*overlays)
    stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
    stack.compose("build", "config-check", "mlflow", timeout=25 * 60)
    return stack


def container_id(stack: Stack, service: str) -> str:
    return stack.compose("ps", "--all", "-q", service).stdout.strip()


def inspect(stack: Stack, service: str, template: str) -> str:
    """`docker inspect -f TEMPLATE` of the service's container: what the engine itself says."""
    result = subprocess.run(
        ["docker", "inspect", "-f", template, container_id(stack, service)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def health(stack: Stack, service: str) -> dict[str, Any]:
    """The container's health record (Status, FailingStreak, Log)."""
    return dict(json.loads(inspect(stack, service, "{{json .State.Health}}")) or {})


def logs(stack: Stack, service: str) -> str:
    result = stack.compose("logs", "--no-color", service, check=False)
    return result.stdout + result.stderr


def up_must_fail(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    result = stack.compose(
        "up", "-d", "--wait", "--wait-timeout", str(UP_FAIL_TIMEOUT), *args,
        timeout=UP_FAIL_TIMEOUT + 120, check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"`up` succeeded:\n{result.stdout}\n{result.stderr}"
    return result


# --- PostgreSQL: healthy only once TCP accepts ---------------------------------------------------


def test_postgres_is_healthy_only_once_tcp_accepts(
    bare_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    script = tmp_path / "50-slow-init.sh"
    # Sourced or run by the entrypoint while its temporary server listens on the socket only.
    script.write_text(
        f'echo "slow init: holding the socket-only phase for {SLOW_INIT_SECONDS} s"\n'
        f"sleep {SLOW_INIT_SECONDS}\n"
    )
    script.chmod(0o755)
    mount = f"{script}:/docker-entrypoint-initdb.d/50-slow-init.sh:ro"
    stack = bare_stack(overlay(tmp_path, "slow-init", {"postgres": {"volumes": [mount]}}))
    stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
    stack.compose("up", "-d", "postgres", timeout=180)
    samples: list[tuple[float, str, bool, bool]] = []  # (t, health, socket ready, tcp open)
    started = time.monotonic()
    while time.monotonic() - started < PG_SAMPLE_DEADLINE:
        # Health first, TCP second: once TCP is open it stays open, so a "healthy" read before a
        # closed port is a real healthy-but-closed moment, never a race the other way round.
        status = health(stack, "postgres").get("Status", "")
        tcp = stack.compose(
            "exec", "-T", "postgres", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5432",
            timeout=30, check=False,
        ).returncode == 0  # fmt: skip
        # What the old healthcheck asked: pg_isready on the Unix socket.
        socket = (
            stack.compose(
                "exec", "-T", "postgres", "pg_isready", "-q", timeout=30, check=False
            ).returncode
            == 0
        )
        samples.append((round(time.monotonic() - started, 1), status, socket, tcp))
        if status == "healthy" and tcp:
            break
        time.sleep(0.5)

    table = "\n".join(map(str, samples))
    # The phase the bug lives in was there: the socket answered while 5432 was closed...
    assert any(socket and not tcp for _, _, socket, tcp in samples), table
    assert "slow init: holding the socket-only phase" in logs(stack, "postgres")
    # ... and the healthcheck never called that healthy.
    assert not any(status == "healthy" and not tcp for _, status, _, tcp in samples), table
    assert samples[-1][1:] == ("healthy", True, True), table
    # Healthy means what mlflow needs: a password login over TCP to its database.
    env = stack.read_docker_env()
    result = stack.compose(
        "exec", "-T", "-e", f"PGPASSWORD={env['POSTGRES_PASSWORD']}", "postgres",
        "psql", "-h", "127.0.0.1", "-U", env["POSTGRES_USER"], "-d", env["POSTGRES_DB"],
        "-Atc", "SELECT 1",
    )  # fmt: skip
    assert result.stdout.strip() == "1"


# --- the tracking server's bounded wait ----------------------------------------------------------


def test_mlflow_gives_up_on_a_database_that_never_comes(bare_stack: Callable[..., Stack]) -> None:
    stack = built(bare_stack)
    started = time.monotonic()
    # --no-deps: no postgres at all, as after `docker compose stop postgres` or a wrong host.
    result = stack.compose(
        "run", "--rm", "--no-deps", "-e", f"MLSTACK_DB_WAIT_SECONDS={WAIT_SECONDS}", "mlflow",
        timeout=300, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        f"PostgreSQL at postgres:5432 did not accept connections within {WAIT_SECONDS} s" in output
    ), output
    assert "MLSTACK_DB_WAIT_SECONDS" in output
    assert "Updating database tables" not in output  # mlflow db upgrade never ran
    # It waited the bound, and not much longer (container start included).
    assert WAIT_SECONDS <= elapsed < WAIT_SECONDS + 60, elapsed


def test_mlflow_waits_for_a_late_database(bare_stack: Callable[..., Stack]) -> None:
    stack = built(bare_stack)
    files = [arg for f in stack.files for arg in ("-f", f)]
    # `mlflow-server --no-such-option`: past the wait and `mlflow db upgrade`, `mlflow server`
    # itself stops on the unknown option, so the run ends by itself.
    command = [
        "docker", "compose", "-p", stack.project, *files, "run", "--rm", "--no-deps",
        "mlflow", "mlflow-server", "--no-such-option",
    ]  # fmt: skip
    with subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[2], env=stack.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as run:  # fmt: skip
        time.sleep(10)  # the server is waiting now; the database arrives late
        stack.compose("up", "-d", "postgres", timeout=180)
        output, _ = run.communicate(timeout=300)
    assert "waiting up to 120 s for PostgreSQL at postgres:5432" in output, output
    assert "did not accept connections" not in output, output
    # mlflow db upgrade ran, then `mlflow server` refused the option.
    assert "Updating database tables" in output, output
    assert "No such option" in output and "--no-such-option" in output, output
    assert stack.psql("SELECT count(*) FROM alembic_version") == [["1"]]


# --- MinIO credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MINIO_ROOT_USER", "ab", "MINIO_ROOT_USER (docker.env) is 2 characters long"),
        ("MINIO_ROOT_PASSWORD", "short", "MINIO_ROOT_PASSWORD (docker.env) is 5 characters long"),
    ],
)
def test_short_minio_credentials_stop_up_naming_the_variable(
    bare_stack: Callable[..., Stack], tmp_path: Path, variable: str, value: str, says: str
) -> None:
    environment = {"environment": {variable: value}}
    stack = built(
        bare_stack, overlay(tmp_path, "short", {"config-check": environment, "minio": environment})
    )
    result = up_must_fail(stack, "minio")
    assert "config-check" in result.stderr, result.stderr
    assert says in logs(stack, "config-check")
    # Compose created the minio container but never started it.
    assert inspect(stack, "minio", "{{.State.Status}}") == "created"
    # Past the check (--no-deps), the server itself refuses, with its own words.
    up_must_fail(stack, "--no-deps", "minio")
    assert SHORT_USER_HINT in logs(stack, "minio")


def test_default_minio_credentials_start(bare_stack: Callable[..., Stack]) -> None:
    stack = built(bare_stack)
    stack.compose("up", "-d", "--wait", "--wait-timeout", "300", "minio", timeout=420)
    assert "config-check: docker.env passes" in logs(stack, "config-check")
    assert health(stack, "minio")["Status"] == "healthy"


# --- unknown flags -------------------------------------------------------------------------------


def test_a_typo_in_the_minio_command_fails_up(
    bare_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    command = {"command": 'server /data --consol-address ":9001"'}
    stack = bare_stack(overlay(tmp_path, "typo", {"minio": command}))
    stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
    up_must_fail(stack, "--no-deps", "minio")
    assert "Incorrect Usage: flag provided but not defined: -consol-address" in logs(stack, "minio")


def test_a_typo_in_the_mc_healthcheck_keeps_minio_unhealthy(
    bare_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    healthcheck = {
        "test": ["CMD", "mc", "ready", "--clusterread", "local"],
        # Quick verdicts: the point is the command, not the timing.
        "interval": "2s", "retries": 2, "start_period": "0s",
    }  # fmt: skip
    stack = bare_stack(overlay(tmp_path, "mc-typo", {"minio": {"healthcheck": healthcheck}}))
    stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
    up_must_fail(stack, "--no-deps", "minio")
    state = health(stack, "minio")
    assert state["Status"] == "unhealthy", state
    outputs = " ".join(entry["Output"] for entry in state["Log"])
    assert "flag provided but not defined: -clusterread" in outputs, outputs
