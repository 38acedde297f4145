"""Artifact transfers on the local platform: the tracking server offers no presigned S3 transfers
(mlstack/artifacts.py), so every client goes through its proxy, with none of the
MLFLOW_ENABLE_PROXY_MULTIPART_* switches set.

The Compose stack, where presigned URLs would name `minio:9000` and hang a host client, is
checked the same way in tests/e2e/test_compose.py. Here the S3 endpoint is on 127.0.0.1, so a
presigned URL would work: what proves the proxy is used is the server's own answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from big_files import MIB, file_sha256
from host_client import run_host_client

if TYPE_CHECKING:
    from conftest import LocalPlatform

pytestmark = pytest.mark.integration

ARTIFACT_MIB = 24
# MLflow's client chooses presigned multipart uploads from 500 MB on; lowered for the client so
# a small file takes the same decision a 600 MB one would.
CLIENT_ENV = {"MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MIB)}
CLIENT_TIMEOUT = 180


def write_random_file(path: Path, mib: int) -> str:
    """`mib` MiB of pseudo-random bytes, written 1 MiB at a time; their sha256."""
    digest = hashlib.sha256()
    seed = hashlib.sha256(path.name.encode()).digest()
    with path.open("wb") as handle:
        for index in range(mib):
            block = hashlib.shake_256(seed + index.to_bytes(4, "big")).digest(MIB)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def bucket_sha256(platform: LocalPlatform, suffix: str) -> tuple[str, str]:
    """(key, sha256) of the one object in the platform's bucket whose key ends with `suffix`,
    hashed as it streams (boto3 with the platform's own keys: the independent client)."""
    s3 = platform.s3()
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket)
        for item in page.get("Contents", [])
        if item["Key"].endswith(suffix)
    ]
    assert len(keys) == 1, keys
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=platform.bucket, Key=keys[0])["Body"].iter_chunks(MIB):
        digest.update(chunk)
    return keys[0], digest.hexdigest()


def server_info(platform: LocalPlatform) -> dict[str, Any]:
    answer = requests.get(f"{platform.tracking_uri}/api/3.0/mlflow/server-info", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_server_offers_no_presigned_transfers(local_platform: LocalPlatform) -> None:
    info = server_info(local_platform)
    assert info["multipart_downloads_enabled"] is False, info
    assert info["multipart_uploads_enabled"] is False, info
    # A client that forces the presigned path anyway is refused, and falls back to the proxy.
    presigned = requests.get(
        f"{local_platform.tracking_uri}/api/2.0/mlflow-artifacts/presigned/0/any/file.bin",
        timeout=30,
    )
    assert presigned.status_code == 501, presigned.text
    assert json.loads(presigned.text)["error_code"] == "NOT_IMPLEMENTED"


def test_host_client_uploads_and_downloads_through_the_proxy(
    local_platform: LocalPlatform, tmp_path: Path
) -> None:
    source = tmp_path / "weights.bin"
    sha256 = write_random_file(source, ARTIFACT_MIB)
    uri = local_platform.tracking_uri
    run_id = run_host_client(
        uri, "upload", "host-client", str(source), timeout=CLIENT_TIMEOUT, env=CLIENT_ENV
    )
    key, stored = bucket_sha256(local_platform, f"/{run_id}/artifacts/weights.bin")
    assert stored == sha256, key

    folder = tmp_path / "downloaded"
    folder.mkdir()
    local = run_host_client(
        uri, "download", run_id, "weights.bin", str(folder), timeout=CLIENT_TIMEOUT
    )
    assert file_sha256(Path(local)) == sha256


@pytest.mark.parametrize("size", [0, 1000, 16 * MIB, 32 * MIB + 1])
def test_streamed_upload_sizes_arrive_whole(
    local_platform: LocalPlatform, tmp_path: Path, size: int
) -> None:
    """The proxy streams uploads to S3 in 16 MiB parts (mlstack/artifacts.py): empty, one small
    PUT, exactly one part, and parts plus a 1-byte tail all arrive byte for byte."""
    import mlflow

    source = tmp_path / f"blob-{size}.bin"
    with source.open("wb") as handle:
        for offset in range(0, size, MIB):
            handle.write(
                hashlib.shake_256(offset.to_bytes(8, "big")).digest(min(MIB, size - offset))
            )
    client = mlflow.MlflowClient(local_platform.tracking_uri)
    experiment = client.get_experiment_by_name("streamed-sizes")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("streamed-sizes")
    )
    run = client.create_run(experiment_id).info
    client.log_artifact(run.run_id, str(source))
    _, stored = bucket_sha256(local_platform, f"/{run.run_id}/artifacts/{source.name}")
    assert stored == file_sha256(source)

    # And back down the proxy, streamed from S3 (mlstack/tracking_app.py): the whole object, with
    # its length announced up front (MLflow's own route announces none: it has not read it yet).
    url = proxy_url(local_platform, run.artifact_uri, source.name)
    with requests.get(url, stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        assert answer.headers.get("Content-Length") == str(size), answer.headers
        assert "attachment" in answer.headers["Content-Disposition"]
        digest = hashlib.sha256()
        for chunk in answer.iter_content(MIB):
            digest.update(chunk)
    assert digest.hexdigest() == stored


def proxy_url(platform: LocalPlatform, artifact_uri: str, name: str) -> str:
    """The proxy's download URL of `name` under a run's `mlflow-artifacts:/...` root."""
    root = artifact_uri.split(":", 1)[1].lstrip("/")
    return f"{platform.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{root}/{name}"


def test_downloads_of_folders_and_missing_files_keep_mlflows_answers(
    local_platform: LocalPlatform, tmp_path: Path
) -> None:
    """A folder is a 400 (MLflow's own route sends a 200 with an empty body for it), a missing
    file a 404 with MLflow's error JSON (MLflow's: a 500, which clients retry for minutes), a
    path that escapes the artifact root MLflow's own 400."""
    import mlflow

    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "roc.png").write_bytes(b"\x89PNG not really")
    client = mlflow.MlflowClient(local_platform.tracking_uri)
    experiment = client.get_experiment_by_name("streamed-sizes")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("streamed-sizes")
    )
    run = client.create_run(experiment_id).info
    client.log_artifacts(run.run_id, str(tmp_path / "plots"), "plots")

    png = requests.get(proxy_url(local_platform, run.artifact_uri, "plots/roc.png"), timeout=30)
    assert png.status_code == 200 and png.content == b"\x89PNG not really"
    assert png.headers["Content-Type"] == "image/png", png.headers
    folder = requests.get(proxy_url(local_platform, run.artifact_uri, "plots"), timeout=30)
    assert folder.status_code == 400, (folder.status_code, folder.text)
    missing = requests.get(
        proxy_url(local_platform, run.artifact_uri, "plots/gone.png"), timeout=30
    )
    assert missing.status_code == 404, (missing.status_code, missing.text)
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    escape = requests.get(proxy_url(local_platform, run.artifact_uri, "..%2F..%2Fx"), timeout=30)
    assert escape.status_code >= 400, (escape.status_code, escape.text)
