"""The Docker tier: the real docker-compose.yml, run the way a user runs it.

`docker compose up -d --build --wait`, every trainer through `docker compose run --rm`, then the
outcome checked through independent clients: the rows in PostgreSQL (psql in the postgres
container), the objects in the bucket (boto3 in the mlflow container, the only one with S3
credentials), the predictions over HTTP on the published port, and the Docker SDK for health.
Then `down` + `up` (the data must survive), a bad param (exit 2), and always `down -v` at the end.

The stack comes from tests/e2e/conftest.py (`stack`): project `mlstack-e2e` (MLSTACK_E2E_PROJECT)
on free host ports, so it runs beside a user's own `mlstack` stack; offline stand-ins unless
MLSTACK_E2E_ONLINE=1. Timings (build, up to healthy) are printed at the end of the module.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import requests
from big_files import MIB, file_sha256, peak_mib, write_random_file
from host_client import run_host_client

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.docker

MODELS = ("linear_model", "logistic_model", "random_forest_model")
LONG_RUNNING = ("postgres", "minio", "mlflow", "serving")
ONE_SHOT = ("config-check", "create-bucket")
WRITABLE_ROOT = ("postgres", "minio")  # see docker-compose.yml: socket folder, config at start
SERVING_PICKUP_SECONDS = 90
# 2 GiB (issue 13's large artifact), above MLflow's 500 MB threshold for presigned multipart
# uploads (MLFLOW_MULTIPART_UPLOAD_...).
LARGE_ARTIFACT_MIB = 2048
HOST_CLIENT_TIMEOUT = 180
LARGE_TRANSFER_TIMEOUT = 1200  # 2 GiB through the proxy: about 1 min each way on busy cores
# Whole-file buffering in a server process would show as +2 GiB of resident memory.
MAX_SERVER_RSS_RISE_MIB = 500


# --- up ----------------------------------------------------------------------------------------


def test_every_service_healthy(stack: Stack) -> None:
    import docker

    lines = stack.compose("ps", "--all", "--format", "json").stdout.strip().splitlines()
    # Compose 2.21+ prints one JSON object per line; older ones one array.
    entries = [
        e
        for line in lines
        for e in (json.loads(line) if line.startswith("[") else [json.loads(line)])
    ]
    state = {e["Service"]: (e["State"], e.get("Health", ""), e.get("ExitCode")) for e in entries}
    for service in LONG_RUNNING:
        assert state.get(service, ("missing",))[:2] == ("running", "healthy"), state
    for service in ONE_SHOT:
        assert state.get(service) == ("exited", "", 0), state

    # The same through the Docker SDK, plus the published ports: only the three, on loopback.
    client = docker.from_env()
    containers = client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
    )
    by_service = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert set(by_service) == set(LONG_RUNNING + ONE_SHOT)
    published: dict[str, str] = {}
    for service, container in by_service.items():
        container.reload()
        if service in LONG_RUNNING:
            assert container.attrs["State"]["Health"]["Status"] == "healthy", service
        host_config = container.attrs["HostConfig"]
        assert host_config["SecurityOpt"] == ["no-new-privileges:true"], service
        # Hardening (docs/reliability-security.md): no capabilities anywhere, non-root except minio, a
        # read-only root filesystem except the two stores.
        assert host_config["CapDrop"] == ["ALL"] and not host_config["CapAdd"], service
        assert not host_config["Privileged"], service
        assert host_config["ReadonlyRootfs"] == (service not in WRITABLE_ROOT), service
        user = container.attrs["Config"]["User"]
        if service != "minio":  # the image's own user (root in the stand-in)
            assert user and user.split(":")[0] not in ("root", "0"), (service, user)
        for port, bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                published[f"{service}:{port}"] = f"{binding['HostIp']}:{binding['HostPort']}"
    assert published == {
        "mlflow:5000/tcp": f"127.0.0.1:{stack.mlflow_port}",
        "serving:5001/tcp": f"127.0.0.1:{stack.serving_port}",
        "minio:9001/tcp": f"127.0.0.1:{stack.console_port}",
    }
    # S3 credentials live in the tracking server (and the bucket init) only.
    serving_env = {e.split("=", 1)[0] for e in by_service["serving"].attrs["Config"]["Env"]}
    assert not serving_env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}


def test_health_check_script_agrees(stack: Stack) -> None:
    result = stack.script("health-check.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    for service in LONG_RUNNING + ONE_SHOT:
        assert re.search(rf"^{service}\s+\S+\s+\S+\s+ok$", result.stdout, re.M), result.stdout


def test_serving_is_up_before_any_model(stack: Stack) -> None:
    assert requests.get(stack.serving_url + "/health", timeout=10).status_code == 200
    answer = stack.invoke(stack.diabetes_payload())
    assert answer.status_code == 503, answer.text
    assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_ui_is_served(stack: Stack) -> None:
    page = requests.get(stack.mlflow_url + "/", timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<html" in page.text.lower()


# --- train ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_trainer_runs(stack: Stack, model: str) -> None:
    stack.assert_trained(stack.train(model))


def test_trainer_explicit_command_form(stack: Stack) -> None:
    stack.assert_trained(stack.train("linear_model", "python", "linear_model/train.py"))


def test_trainers_hold_no_credentials(stack: Stack) -> None:
    result = stack.train("linear_model", "env")  # a first word that is no option: a command
    assert result.returncode == 0, result.stderr
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert "MLFLOW_TRACKING_URI" in names
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}


def test_trainer_passes_overrides_through(stack: Stack) -> None:
    result = stack.train("linear_model", "--set", "alpha=0.5")
    stack.assert_trained(result)
    run_id = re.search(r"^run:\s+(\w+)", result.stdout, re.M).group(1)
    assert stack.psql(
        f"SELECT value FROM params WHERE run_uuid = '{run_id}' AND key = 'alpha'"
    ) == [["0.5"]]


def test_bad_param_exits_2_naming_the_key(stack: Stack) -> None:
    runs_before = stack.psql("SELECT count(*) FROM runs")
    result = stack.train("linear_model", "--set", "alpha=-1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "alpha" in result.stderr, result.stderr
    assert stack.psql("SELECT count(*) FROM runs") == runs_before  # no run was created


# --- outcomes, through independent clients ----------------------------------------------------


def test_runs_are_in_postgres(stack: Stack) -> None:
    rows = stack.psql(
        "SELECT e.name, count(*) FROM runs r JOIN experiments e USING (experiment_id) "
        "WHERE r.status = 'FINISHED' AND r.lifecycle_stage = 'active' GROUP BY e.name"
    )
    finished = {name: int(count) for name, count in rows}
    assert finished.get("linear_model", 0) >= 3, finished  # default, explicit form, alpha=0.5
    assert finished.get("logistic_model", 0) >= 1, finished
    assert finished.get("random_forest_model", 0) >= 1, finished


def test_champions_are_in_the_registry(stack: Stack) -> None:
    assert set(stack.champion_versions()) == set(MODELS)


def test_artifacts_are_in_the_bucket(stack: Stack) -> None:
    keys = stack.bucket_keys("artifacts/")
    assert any("/plots/" in key for key in keys), keys[:20]
    # Each champion's model files, where the registry says they are (proxied artifacts:
    # mlflow-artifacts:/<path> is s3://mlflow/artifacts/<path>).
    rows = stack.psql(
        "SELECT v.name, v.storage_location FROM model_versions v JOIN registered_model_aliases a "
        "ON a.name = v.name AND a.version = v.version WHERE a.alias = 'champion'"
    )
    assert len(rows) == len(MODELS)
    for name, location in rows:
        assert location.startswith("mlflow-artifacts:/"), location
        prefix = "artifacts/" + location.removeprefix("mlflow-artifacts:").strip("/") + "/"
        files = {key.removeprefix(prefix) for key in keys if key.startswith(prefix)}
        assert "MLmodel" in files, (name, prefix, sorted(files))


def test_serving_answers_with_the_champion(stack: Stack) -> None:
    version = stack.champion_versions()["linear_model"]
    answer = stack.wait_for_version(version)
    assert answer.headers["X-Model-Name"] == "linear_model"
    served = answer.json()["predictions"]
    # The same model loaded independently from the registry by a program on the host, through
    # the published UI port, with a host user's environment (see "host clients" below).
    payload = json.dumps(stack.diabetes_payload())
    expected = run_host_client(
        stack.mlflow_url, "predict", f"models:/linear_model/{version}", payload, timeout=180
    )
    assert served == pytest.approx(expected, rel=1e-9)


def test_other_champions_answer_by_name(stack: Stack) -> None:
    for model in ("logistic_model", "random_forest_model"):
        payload = stack.dataset_payload(model)
        version = stack.champion_versions()[model]
        deadline = time.monotonic() + SERVING_PICKUP_SECONDS
        while True:
            answer = stack.invoke(payload, f"/models/{model}/invocations")
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == version
        assert len(answer.json()["predictions"]) == 2


def test_serve_model_script_pins_a_version_and_back(stack: Stack) -> None:
    champion = stack.champion_versions()["linear_model"]
    other = "2" if champion != "2" else "1"
    result = stack.script("serve-model.sh", "linear_model", other)
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_for_version(other)
    result = stack.script("serve-model.sh", "linear_model")
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_for_version(stack.champion_versions()["linear_model"])


# --- host clients: a notebook on the host, MLFLOW_TRACKING_URI=http://127.0.0.1:<port> ----------
# None of MLFLOW_ENABLE_PROXY_MULTIPART_* is set (tests/host_client.py removes every MLFLOW_*
# variable but the tracking URI). Were the server to offer presigned transfers, the client would
# fetch http://minio:9000/... URLs, unknown on the host, and retry for minutes: every call has a
# timeout so that fails instead of hanging.


def champion_run_id(stack: Stack, model: str) -> str:
    if model not in stack.champion_versions():  # this section run alone (-k host)
        stack.assert_trained(stack.train(model))
    rows = stack.psql(
        "SELECT v.run_id FROM model_versions v JOIN registered_model_aliases a "
        f"ON a.name = v.name AND a.version = v.version WHERE a.alias = 'champion' AND v.name = '{model}'"
    )
    return rows[0][0]


def test_host_client_server_offers_no_presigned_transfers(stack: Stack) -> None:
    info = requests.get(f"{stack.mlflow_url}/api/3.0/mlflow/server-info", timeout=30).json()
    assert info["multipart_downloads_enabled"] is False, info
    assert info["multipart_uploads_enabled"] is False, info


def test_host_client_loads_the_champion_and_predicts(stack: Stack) -> None:
    champion_run_id(stack, "linear_model")
    payload = stack.diabetes_payload()
    predictions = run_host_client(
        stack.mlflow_url,
        "predict",
        "models:/linear_model@champion",
        json.dumps(payload),
        timeout=HOST_CLIENT_TIMEOUT,
    )
    assert len(predictions) == len(payload["dataframe_split"]["data"])
    version = stack.champion_versions()["linear_model"]
    served = stack.wait_for_version(version).json()["predictions"]
    assert predictions == pytest.approx(served, rel=1e-9)


def test_host_client_downloads_a_plot_as_stored(stack: Stack, tmp_path: Path) -> None:
    run_id = champion_run_id(stack, "linear_model")
    plots = {
        key: sha256
        for key, sha256 in stack.bucket_objects("artifacts/").items()
        if f"/{run_id}/artifacts/plots/" in key and key.endswith(".png")
    }
    assert plots, f"no PNG plot of run {run_id} in the bucket"
    key, stored = sorted(plots.items())[0]
    relative = key.split(f"/{run_id}/artifacts/", 1)[1]
    local = run_host_client(
        stack.mlflow_url, "download", run_id, relative, str(tmp_path), timeout=HOST_CLIENT_TIMEOUT
    )
    assert file_sha256(Path(local)) == stored


def mlflow_container_rss(stack: Stack) -> Iterator[int]:
    """Resident bytes of every process of the mlflow container, read from the host's /proc."""
    name = stack.compose("ps", "-q", "mlflow").stdout.strip()
    pid = int(
        subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Pid}}", name],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    while True:
        total = 0
        with suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                with suppress(psutil.NoSuchProcess):
                    total += process.memory_info().rss
        yield total


def rss_rise(stack: Stack) -> AbstractContextManager[dict[str, float]]:
    """{'baseline', 'peak'} MiB of the mlflow container's processes, sampled every 0.2 s."""
    probe = mlflow_container_rss(stack)
    return peak_mib(lambda: next(probe))


def test_host_client_round_trips_a_2_gib_artifact(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    sha256 = write_random_file(source, LARGE_ARTIFACT_MIB, seed=LARGE_ARTIFACT_MIB)

    started = time.monotonic()
    with rss_rise(stack) as upload_rss:
        run_id = run_host_client(
            stack.mlflow_url, "upload", "host-client", str(source), timeout=LARGE_TRANSFER_TIMEOUT
        )
    stack.timings[f"host upload {LARGE_ARTIFACT_MIB} MiB"] = time.monotonic() - started
    print(f"mlflow container RSS during the upload, MiB: {upload_rss}", flush=True)
    keys = [
        k for k in stack.bucket_keys("artifacts/") if k.endswith(f"/{run_id}/artifacts/weights.bin")
    ]
    assert len(keys) == 1, keys
    assert stack.bucket_object_sha256(keys[0]) == (LARGE_ARTIFACT_MIB * MIB, sha256)

    source.unlink()  # room for the copy coming back
    started = time.monotonic()
    with rss_rise(stack) as download_rss:
        local = run_host_client(
            stack.mlflow_url,
            "download",
            run_id,
            "weights.bin",
            str(tmp_path),
            timeout=LARGE_TRANSFER_TIMEOUT,
        )
    stack.timings[f"host download {LARGE_ARTIFACT_MIB} MiB"] = time.monotonic() - started
    print(f"mlflow container RSS during the download, MiB: {download_rss}", flush=True)
    assert file_sha256(Path(local)) == sha256
    Path(local).unlink()
    for figures in (upload_rss, download_rss):
        assert figures["peak"] - figures["baseline"] < MAX_SERVER_RSS_RISE_MIB, figures


# --- restart: the volumes keep everything ------------------------------------------------------


def test_everything_survives_down_and_up(stack: Stack) -> None:
    runs = stack.psql("SELECT run_uuid, status FROM runs ORDER BY run_uuid")
    champions = stack.champion_versions()
    keys = stack.bucket_keys("artifacts/")

    stack.compose("down", timeout=180)
    stack.up("second up (warm) to all healthy")
    # The init ran again and left the bucket alone (HEAD first).
    assert "bucket 'mlflow' already exists" in stack.compose("logs", "create-bucket").stdout

    assert stack.psql("SELECT run_uuid, status FROM runs ORDER BY run_uuid") == runs
    assert stack.champion_versions() == champions
    assert set(stack.bucket_keys("artifacts/")) == set(keys)
    stack.wait_for_version(champions["linear_model"])
