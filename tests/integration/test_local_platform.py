"""`mlstack local`: the real platform (PostgreSQL, SeaweedFS S3, MLflow, serving), checked through
independent clients (psycopg2, boto3, MlflowClient), across `up` twice, `down` and `up` again.

The tests in this module run in order and share the session platform; the restart test goes last.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.integration

SERVICES = ("postgres", "s3", "mlflow", "serving")
EXPERIMENT = "local-platform-test"
ARTIFACT_NAME = "hello.txt"
ARTIFACT_TEXT = "hello from the local platform\n"


def log_run_with_artifact(tracking_uri: str) -> str:
    """Log one run with a param, a metric and a small artifact; returns its run id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "alpha", "0.5")
    client.log_metric(run.info.run_id, "rmse", 0.25)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ARTIFACT_NAME
        path.write_text(ARTIFACT_TEXT)
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def download_artifact(tracking_uri: str, run_id: str) -> str:
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.MlflowClient(tracking_uri).download_artifacts(run_id, ARTIFACT_NAME, folder)
        return Path(local).read_text()


def run_row(pg_uri: str, run_id: str) -> tuple[Any, ...] | None:
    import psycopg2

    with psycopg2.connect(pg_uri) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT run_uuid, status, artifact_uri FROM runs WHERE run_uuid = %s", (run_id,)
        )
        row = cursor.fetchone()
    conn.close()
    return row


def artifact_keys(s3_client: Any, bucket: str, run_id: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", []) if run_id in item["Key"]]


def recorded_pids(platform: LocalPlatform) -> dict[str, int]:
    import json

    run = platform.state_dir / "run"
    return {path.stem: json.loads(path.read_text())["pid"] for path in run.glob("*.pid")}


def platform_ports(platform: LocalPlatform) -> list[int]:
    import json

    config = json.loads((platform.state_dir / "platform.json").read_text())
    ports = [config[k] for k in ("mlflow_port", "serving_port", "postgres_port")]
    if config["artifacts"] == "s3":
        ports += [config["s3_port"], *config["s3_internal_ports"].values()]
    return ports


def open_ports(ports: list[int]) -> list[int]:
    from mlstack.local.processes import port_is_open

    return [port for port in ports if port_is_open(port)]


# --- one platform, S3 artifacts ----------------------------------------------------------------


def test_env_file_has_everything_clients_need(local_platform: LocalPlatform) -> None:
    values = local_platform.exported()
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLSTACK_PG_URI",
        "MLSTACK_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLSTACK_BUCKET",
        "MLSTACK_SERVING_URL",
    ):
        assert values.get(key), key
    assert values["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert values["DO_NOT_TRACK"] == "true"
    assert all(
        line.startswith("export ") for line in local_platform.env_file.read_text().splitlines()
    )


def test_postgres_has_mlflow_schema(pg_conn: Any) -> None:
    with pg_conn.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT version_num FROM alembic_version")
        assert cursor.fetchone() is not None
    assert {"experiments", "runs", "alembic_version", "registered_models"} <= tables


def psycopg2_autocommit(pg_uri: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    return conn


def valid_extra_indexes(pg_uri: str) -> set[str]:
    """mlstack's extra indexes (mlstack/platform/schema.py) present and valid, per pg_index."""
    import psycopg2

    from mlstack.platform.schema import INDEX_NAMES

    conn = psycopg2.connect(pg_uri)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indisvalid AND c.relname = ANY(%s)",
                (list(INDEX_NAMES),),
            )
            return {row[0] for row in cursor.fetchall()}
    finally:
        conn.close()


def test_extra_indexes_serve_the_runs_table_query(local_platform: LocalPlatform) -> None:
    """The index mlstack adds after `mlflow db upgrade` is there, and PostgreSQL picks it for the
    UI's runs-table query (MLflow 3.17's SQL, with sequential scans off so the choice does not
    depend on how few rows the session platform holds)."""
    import psycopg2

    from mlstack.platform.schema import INDEX_NAMES

    assert valid_extra_indexes(local_platform.pg_uri) == set(INDEX_NAMES)
    conn = psycopg2.connect(local_platform.pg_uri)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute(
                "EXPLAIN SELECT DISTINCT runs.run_uuid, runs.name, runs.start_time,"
                " CASE WHEN (runs.start_time IS NULL) THEN 1 ELSE 0 END AS clause_1"
                " FROM runs WHERE runs.experiment_id IN (0) AND runs.lifecycle_stage IN ('active')"
                " ORDER BY clause_1, runs.start_time DESC, runs.run_uuid LIMIT 101"
            )
            plan = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        conn.close()
    assert "mlstack_runs_experiment_start_time" in plan, plan


def test_bucket_exists_and_needs_credentials(local_platform: LocalPlatform, s3_client: Any) -> None:
    from mlstack.local.s3 import s3_client as make_client

    s3_client.head_bucket(Bucket=local_platform.bucket)
    stranger = make_client(local_platform.s3_endpoint, "nobody", "wrong-secret")
    with pytest.raises(Exception, match=r"InvalidAccessKeyId|AccessDenied|SignatureDoesNotMatch"):
        stranger.list_buckets()


def test_every_port_listens_on_loopback_only(local_platform: LocalPlatform) -> None:
    import psutil

    pids = set(recorded_pids(local_platform).values())
    family = set(pids)
    for pid in pids:
        family |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
    listening = [
        conn.laddr
        for conn in psutil.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in family
    ]
    assert listening
    assert all(address.ip == "127.0.0.1" for address in listening), listening


@pytest.fixture(scope="module")
def logged_run(local_platform: LocalPlatform) -> str:
    """One run with an artifact, logged through the tracking server; its id."""
    return log_run_with_artifact(local_platform.tracking_uri)


def test_run_goes_to_postgres_and_artifact_to_s3(
    local_platform: LocalPlatform, s3_client: Any, logged_run: str
) -> None:
    run_id = logged_run

    row = run_row(local_platform.pg_uri, run_id)
    assert row is not None
    assert row[1] == "FINISHED"
    assert str(row[2]).startswith("mlflow-artifacts:")  # proxied: clients need no S3 keys

    prefix = local_platform.env["MLSTACK_ARTIFACTS_PREFIX"]
    keys = artifact_keys(s3_client, local_platform.bucket, run_id)
    assert any(key.startswith(f"{prefix}/") and key.endswith(ARTIFACT_NAME) for key in keys), keys
    assert download_artifact(local_platform.tracking_uri, run_id) == ARTIFACT_TEXT


def test_status_reports_every_service_healthy(local_platform: LocalPlatform) -> None:
    result = local_platform.status()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(SERVICES)
    assert all(" healthy" in line for line in lines), lines


def test_serving_answers_health(local_platform: LocalPlatform) -> None:
    from mlstack.local.processes import http_status

    assert http_status(f"{local_platform.serving_url}/health") == 200


def test_up_again_is_harmless(local_platform: LocalPlatform) -> None:
    before = recorded_pids(local_platform)
    result = local_platform.up()
    assert result.stdout.count("already running") == len(SERVICES), result.stdout
    assert recorded_pids(local_platform) == before


def test_logs_show_each_service(local_platform: LocalPlatform) -> None:
    everything = local_platform.logs(lines=5)
    for service in SERVICES:
        assert f"{service}.log" in everything
    assert "GET /health" in local_platform.logs("mlflow", lines=200)


def test_down_then_up_keeps_runs_and_artifacts(
    local_platform: LocalPlatform, s3_client: Any, logged_run: str
) -> None:
    import psutil

    run_id = logged_run
    pids = recorded_pids(local_platform)
    ports = platform_ports(local_platform)
    # As if an upgrade had rebuilt the table without it: `up` puts mlstack's index back.
    drop = psycopg2_autocommit(local_platform.pg_uri)
    with drop.cursor() as cursor:
        cursor.execute("DROP INDEX mlstack_runs_experiment_start_time")
    drop.close()

    down = local_platform.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in pids.values() if psutil.pid_exists(pid)]
    assert not list((local_platform.state_dir / "run").glob("*.pid"))
    assert open_ports(ports) == []
    assert local_platform.status().returncode != 0
    assert local_platform.down().returncode == 0  # nothing running: still fine

    local_platform.up()
    assert platform_ports(local_platform) == ports  # the same ports, reused from the state dir
    assert run_row(local_platform.pg_uri, run_id) is not None
    assert "mlstack_runs_experiment_start_time" in valid_extra_indexes(local_platform.pg_uri)
    assert artifact_keys(s3_client, local_platform.bucket, run_id)
    assert download_artifact(local_platform.tracking_uri, run_id) == ARTIFACT_TEXT


# --- a second, separate platform: artifacts in a folder, no S3 ---------------------------------


def test_taken_port_is_refused_with_its_number(
    local_platform: LocalPlatform, make_local_platform: PlatformFactory
) -> None:
    clash = make_local_platform()
    clash.mlflow_port = int(local_platform.tracking_uri.rsplit(":", 1)[1])

    result = clash.up(check=False)
    assert result.returncode != 0
    assert f"port {clash.mlflow_port}" in result.stderr
    assert not list((clash.state_dir / "run").glob("*.pid"))


def test_file_artifacts_mode(make_local_platform: PlatformFactory, tmp_path: Path) -> None:
    art = tmp_path / "art"
    platform = make_local_platform(artifacts="file", artifacts_dir=art, workers=1)
    try:
        platform.up()
        assert "MLSTACK_S3_ENDPOINT" not in platform.exported()
        status = platform.status()
        assert status.returncode == 0, status.stdout
        assert [line.split()[0] for line in status.stdout.splitlines()] == [
            "postgres",
            "mlflow",
            "serving",
        ]
        run_id = log_run_with_artifact(platform.tracking_uri)
        stored = list(art.rglob(ARTIFACT_NAME))
        assert stored, "artifact not in the folder"
        assert run_id in stored[0].parts
        assert stored[0].read_text() == ARTIFACT_TEXT
    finally:
        platform.down()
    assert platform.status().returncode != 0


# --- pid files: never signal a process that merely reuses a recorded pid -----------------------


def test_down_leaves_a_process_that_reused_a_recorded_pid_alone(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mlstack.local.processes import ProcessRecord

    stranger = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "state" / "run"
        run.mkdir(parents=True)
        real = ProcessRecord.of(stranger.pid)
        assert real.start_ticks is not None
        # The pid's earlier owner: started 10 s before this one, by the ticks since boot.
        reused = ProcessRecord(real.pid, real.create_time - 10.0, ["python", "-m", "mlflow"],
                               start_ticks=real.start_ticks - 10 * os.sysconf("SC_CLK_TCK"))  # fmt: skip
        reused.write(run / "mlflow.pid")
        assert reused.live_process() is None

        down = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlstack",
                "local",
                "down",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert down.returncode == 0, down.stderr
        assert "nothing running" in down.stdout
        assert stranger.poll() is None, "an unrelated process was signalled"
        assert not (run / "mlflow.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()
