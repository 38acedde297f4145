"""A 2 GiB model through the tracking server's proxy, up and down, on a dedicated local platform
(one MLflow worker); one test, because every 2 GiB transfer costs a minute or more here.

The "2 GiB model" is an sklearn model folder (MLmodel, skops file) that also carries a 2 GiB
`weights.bin`, logged with `log_artifacts` and registered from its run, so that the upload and
serving's download are genuinely 2 GiB:
- up: the upload goes through the proxy (clients hold no S3 credentials) and lands in the bucket
  byte for byte (sha256 read with boto3, the independent client);
- down: real `mlstack serve` follows `big_model@champion`. While it downloads version 2 through
  the proxy (watched in its own temporary folder), every request is answered by version 1
  (`X-Model-Version: 1`, version 1's prediction); then it switches to version 2, and its copy of
  `weights.bin` is byte for byte the source;
- the tracking server's resident memory (all its processes, sampled every 0.2 s) rises by far
  less than the file during both transfers.

The plain artifact round trip (`log_artifact` / `download_artifacts`) at 2 GiB is in the Docker
tier (tests/e2e/test_compose.py).

Big files are pseudo-random (numpy PCG64, nothing to compress or dedupe) and deleted at the end,
with their bucket objects. `pytest -s` prints the timings and memory figures.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import requests
from big_files import MIB, file_sha256, peak_mib, write_random_file

from mlstack.local.processes import ProcessRecord

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.reliability

BIG_MIB = 2048
SERVING_START_SECONDS = 180
SWITCH_SECONDS = 900
# Whole-file buffering would show as +2 GiB; streaming costs a few chunks and parts.
MAX_SERVER_RSS_RISE_MIB = 500
MODEL = "big_model"


def say(message: str) -> None:
    print(f"[large-artifacts] {message}", flush=True)


def bucket_keys(platform: LocalPlatform, suffix: str) -> list[str]:
    s3 = platform.s3()
    return [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket)
        for item in page.get("Contents", [])
        if item["Key"].endswith(suffix)
    ]


def bucket_sha256(platform: LocalPlatform, key: str) -> tuple[int, str]:
    """(size, sha256) of one object, hashed as it streams."""
    digest = hashlib.sha256()
    size = 0
    body = platform.s3().get_object(Bucket=platform.bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(4 * MIB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def delete_objects(platform: LocalPlatform, suffix: str) -> None:
    for key in bucket_keys(platform, suffix):
        platform.s3().delete_object(Bucket=platform.bucket, Key=key)


def server_rss(platform: LocalPlatform) -> int:
    """Resident bytes of the `mlflow server` process tree (supervisor, worker, job runner)."""
    record = ProcessRecord.read(platform.state_dir / "run" / "mlflow.pid")
    assert record is not None, "no mlflow.pid"
    total = 0
    with suppress(psutil.NoSuchProcess):
        root = psutil.Process(record.pid)
        for process in [root, *root.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
    return total


def peak_rss(platform: LocalPlatform) -> AbstractContextManager[dict[str, float]]:
    """{'baseline', 'peak'} MiB of the server's RSS, sampled every 0.2 s during the block."""
    return peak_mib(lambda: server_rss(platform))


@pytest.fixture(scope="module")
def platform(make_local_platform: PlatformFactory) -> Iterator[LocalPlatform]:
    platform = make_local_platform(workers=1)
    platform.up()
    yield platform
    platform.down()


# --- a 2 GiB model, served while it downloads ---------------------------------------------------


def register_version(
    platform: LocalPlatform, folder: Path, slope: float, big_file_seed: int | None
) -> tuple[str, str | None]:
    """An sklearn LinearRegression (y = slope * x) saved to `folder`, with a 2 GiB weights.bin
    beside it when `big_file_seed` is given, logged to a run and registered as MODEL:
    (version, sha256 of weights.bin)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    x = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    model = LinearRegression().fit(x, slope * x["x"].to_numpy())
    signature = infer_signature(x, np.asarray(model.predict(x)))
    mlflow.sklearn.save_model(
        model, str(folder), signature=signature, pip_requirements=["scikit-learn"]
    )
    sha256 = None
    if big_file_seed is not None:
        sha256 = write_random_file(folder / "weights.bin", BIG_MIB, seed=big_file_seed)
    mlflow.set_tracking_uri(platform.tracking_uri)
    mlflow.set_experiment("large-model")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", MODEL).version
    return str(version), sha256


def invoke(port: int) -> tuple[str | None, float | None]:
    answer = requests.post(
        f"http://127.0.0.1:{port}/invocations",
        json={"dataframe_split": {"columns": ["x"], "data": [[10.0]]}},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    return answer.headers.get("X-Model-Version"), float(prediction)


def downloaded_bytes(folder: Path) -> int:
    """Bytes of weights.bin files under serving's temporary folder (its model downloads)."""
    total = 0
    for path in folder.rglob("weights.bin"):
        with suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


@pytest.fixture
def serving_tmp(tmp_path: Path) -> Path:
    folder = tmp_path / "serving-tmp"
    folder.mkdir()
    return folder


@pytest.fixture
def serve(platform: LocalPlatform, serving_tmp: Path) -> Iterator[int]:
    """Real `mlstack serve` on MODEL@champion, its TMPDIR the test's folder: its port."""
    from conftest import free_port

    port = free_port()
    env = {
        **platform.env,
        "MLFLOW_TRACKING_URI": platform.tracking_uri,
        "MLSTACK_SERVE_MODEL": MODEL,
        "MLSTACK_SERVE_ALIAS": "champion",
        "MLSTACK_POLL_INTERVAL_SECONDS": "1",
        "TMPDIR": str(serving_tmp),
    }
    env.pop("MLSTACK_SERVE_MODEL_URI", None)
    log = (serving_tmp.parent / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlstack", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield port
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
        say("serve.log tail:\n" + (serving_tmp.parent / "serve.log").read_text()[-3000:])


def test_a_2_gib_model_goes_up_and_is_served_while_the_old_version_answers(
    platform: LocalPlatform, tmp_path: Path, serving_tmp: Path, serve: int
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(platform.tracking_uri)
    try:
        v1, _ = register_version(platform, tmp_path / "v1", slope=1.0, big_file_seed=None)
        client.set_registered_model_alias(MODEL, "champion", v1)
        deadline = time.monotonic() + SERVING_START_SECONDS
        while True:
            with suppress(requests.RequestException, AssertionError):
                if invoke(serve) == (v1, pytest.approx(10.0)):
                    break
            assert time.monotonic() < deadline, "serving never answered with version 1"
            time.sleep(1)

        started = time.monotonic()
        with peak_rss(platform) as upload_rss:
            v2, sha256 = register_version(platform, tmp_path / "v2", slope=2.0, big_file_seed=7)
        say(
            f"version {v2} with {BIG_MIB} MiB registered in {time.monotonic() - started:.1f} s "
            f"(file written, then uploaded through the proxy); server RSS MiB {upload_rss}"
        )
        (tmp_path / "v2" / "weights.bin").unlink()
        (key,) = bucket_keys(platform, "/artifacts/model/weights.bin")
        assert bucket_sha256(platform, key) == (BIG_MIB * MIB, sha256)

        with peak_rss(platform) as download_rss:
            client.set_registered_model_alias(MODEL, "champion", v2)
            moved = time.monotonic()

            answers: list[tuple[float, str | None, float | None, int]] = []
            while True:
                partial = downloaded_bytes(serving_tmp)
                version, prediction = invoke(serve)
                answers.append((time.monotonic() - moved, version, prediction, partial))
                if version == v2:
                    break
                assert time.monotonic() - moved < SWITCH_SECONDS, answers[-5:]
                time.sleep(0.2)
        switched = answers[-1][0]
        say(f"switched to version {v2} {switched:.1f} s after the alias moved; RSS {download_rss}")

        before = answers[:-1]
        assert all(a[1] == v1 and a[2] == pytest.approx(10.0) for a in before), before[-5:]
        # Answers from version 1 while serving's copy of weights.bin was under way.
        during = [a for a in before if 0 < a[3] < BIG_MIB * MIB]
        assert during, f"no answer seen during the download: {before[-5:]}"
        say(f"{len(before)} answers from version {v1} after the move, {len(during)} mid-download")
        assert answers[-1][2] == pytest.approx(20.0)
        for _ in range(5):
            assert invoke(serve) == (v2, pytest.approx(20.0))
        served = requests.get(f"http://127.0.0.1:{serve}/version", timeout=10).json()
        assert served["model_version"] == v2, served
        # What serving downloaded is the 2 GiB file, byte for byte.
        (copy,) = serving_tmp.rglob("weights.bin")
        assert copy.stat().st_size == BIG_MIB * MIB
        assert file_sha256(copy) == sha256
        for figures in (upload_rss, download_rss):
            assert figures["peak"] - figures["baseline"] < MAX_SERVER_RSS_RISE_MIB, figures
    finally:
        delete_objects(platform, "/artifacts/model/weights.bin")
