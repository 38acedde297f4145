"""Backup and restore of the native platform, end to end, checked through independent clients.

One fresh platform of its own (the shared session platform is left alone): train all three models
with the real trainer commands, record what a user would check (rows in PostgreSQL, objects and
their sha256 in the bucket, predictions over HTTP), `mlstack backup create`, then destroy it
(`mlstack local down` and delete the state dir), `up` an empty platform on the same state dir,
`mlstack backup restore`, and compare. Then the refusals: a non-empty target, a corrupted, a
truncated and a missing archive; and a restore into a platform with `--artifacts file`.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import requests
from trainer_helpers import MODELS, split_payload, train, wait_until_served

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
# What "the same platform" means to a user: every row of these tables, compared as sets.
SNAPSHOT_QUERIES = {
    "runs": "SELECT run_uuid, name, status, experiment_id, artifact_uri FROM runs",
    "params": "SELECT run_uuid, key, value FROM params",
    "metrics": "SELECT run_uuid, key, value, step, timestamp FROM metrics",
    "model_versions": "SELECT name, version, run_id, storage_location, source FROM model_versions",
    "registered_model_aliases": "SELECT name, alias, version FROM registered_model_aliases",
    "experiments": "SELECT experiment_id, name, artifact_location FROM experiments",
}
DATASETS = {"linear_model": "load_diabetes", "logistic_model": "load_breast_cancer",
            "random_forest_model": "load_wine"}  # fmt: skip


@dataclass
class Snapshot:
    rows: dict[str, set[tuple[Any, ...]]]
    objects: dict[str, str]  # key -> sha256
    predictions: dict[str, list[Any]]
    champions: dict[str, str]


def run_backup(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mlstack backup ARGS`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mlstack", "backup", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def db_rows(platform: LocalPlatform) -> dict[str, set[tuple[Any, ...]]]:
    import psycopg2

    conn = psycopg2.connect(platform.pg_uri)
    try:
        with conn.cursor() as cur:
            rows = {}
            for table, sql in SNAPSHOT_QUERIES.items():
                cur.execute(sql)
                rows[table] = set(cur.fetchall())
            return rows
    finally:
        conn.close()


def bucket_objects(platform: LocalPlatform) -> dict[str, str]:
    """Every object in the platform's bucket with its sha256, read with boto3."""
    s3 = platform.s3()
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=platform.bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
    return found


def folder_objects(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


def sample(model: str) -> pd.DataFrame:
    from sklearn import datasets

    loader = getattr(datasets, DATASETS[model])
    return loader(as_frame=True).data.astype("float64").iloc[:5]


def invocations_url(platform: LocalPlatform, model: str) -> str:
    base = platform.serving_url
    return (
        f"{base}/invocations" if model == "linear_model" else f"{base}/models/{model}/invocations"
    )


def served_predictions(platform: LocalPlatform, champions: dict[str, str]) -> dict[str, list[Any]]:
    """Each champion's predictions over HTTP, once serving answers with that version."""
    predictions = {}
    for model in MODELS:
        url, payload = invocations_url(platform, model), split_payload(sample(model))
        wait_until_served(url, champions[model], payload)
        response = requests.post(url, json=payload, timeout=30)
        assert response.status_code == 200, response.text
        predictions[model] = response.json()["predictions"]
    return predictions


def snapshot(platform: LocalPlatform, objects: dict[str, str] | None = None) -> Snapshot:
    rows = db_rows(platform)
    champions = {name: str(version) for name, _, version in rows["registered_model_aliases"]}
    return Snapshot(
        rows=rows,
        objects=bucket_objects(platform) if objects is None else objects,
        predictions=served_predictions(platform, champions),
        champions=champions,
    )


def rewrite_member(archive: Path, out: Path, name: str, change: Any) -> None:
    """A copy of `archive` with member `name`'s bytes passed through `change`."""
    with tarfile.open(archive, "r:*") as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if member.name == name:
                data = change(data)
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if member.isfile() else None)


@pytest.fixture(scope="module")
def backed_up(make_local_platform: PlatformFactory, tmp_path_factory: Any) -> dict[str, Any]:
    """Train all three, snapshot, back up, destroy, up again empty, restore, snapshot again."""
    platform = make_local_platform(workers=1)
    platform.up()
    for model in MODELS:
        result = train(platform, model)
        assert result.returncode == 0, f"{model}:\n{result.stdout}\n{result.stderr}"
    before = snapshot(platform)

    archive = tmp_path_factory.mktemp("backup") / "platform.tar.gz"
    created = run_backup("create", "--state-dir", str(platform.state_dir), "--out", str(archive))
    assert created.returncode == 0, created.stdout + created.stderr

    platform.down()
    shutil.rmtree(platform.state_dir)
    platform.up()
    assert not bucket_objects(platform), "a fresh platform should start with an empty bucket"
    assert not db_rows(platform)["runs"]

    restored = run_backup("restore", str(archive), "--state-dir", str(platform.state_dir))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    return {"platform": platform, "archive": archive, "before": before, "after": snapshot(platform),
            "restore_output": restored.stdout}  # fmt: skip


def test_restore_brings_back_runs_params_metrics_versions_and_aliases(
    backed_up: dict[str, Any],
) -> None:
    before, after = backed_up["before"], backed_up["after"]
    assert len(before.rows["runs"]) >= 3 and len(before.rows["model_versions"]) >= 3
    for table in SNAPSHOT_QUERIES:
        assert after.rows[table] == before.rows[table], f"{table} differs after restore"
    assert after.champions == before.champions
    assert "restore: OK" in backed_up["restore_output"]


def test_restore_brings_back_every_object_with_the_same_sha256(backed_up: dict[str, Any]) -> None:
    before, after = backed_up["before"], backed_up["after"]
    assert any(key.endswith("/model.skops") for key in before.objects)
    assert after.objects == before.objects


def test_serving_answers_the_same_predictions_after_restore(backed_up: dict[str, Any]) -> None:
    before, after = backed_up["before"], backed_up["after"]
    for model in MODELS:
        np.testing.assert_array_equal(np.asarray(after.predictions[model]),
                                      np.asarray(before.predictions[model]), err_msg=model)  # fmt: skip


def test_verify_accepts_the_archive_and_its_manifest_counts_tables(
    backed_up: dict[str, Any], tmp_path: Path
) -> None:
    archive: Path = backed_up["archive"]
    result = run_backup("verify", str(archive))
    assert result.returncode == 0, result.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[:2] == ["manifest.json", "postgres.dump"]
    assert manifest["table_counts"]["runs"] == len(backed_up["before"].rows["runs"])
    assert manifest["object_count"] == len(backed_up["before"].objects)
    assert manifest["mlflow_version"] and manifest["mlstack_version"]
    assert len(manifest["dump_sha256"]) == 64


def test_restore_refuses_a_platform_that_is_not_empty(backed_up: dict[str, Any]) -> None:
    platform = backed_up["platform"]
    rows_before, objects_before = db_rows(platform), bucket_objects(platform)
    result = run_backup(
        "restore", str(backed_up["archive"]), "--state-dir", str(platform.state_dir)
    )
    assert result.returncode == 1
    assert "is not empty" in result.stderr and "--force" in result.stderr
    assert db_rows(platform) == rows_before and bucket_objects(platform) == objects_before


@pytest.mark.parametrize("damage", ["dump_bytes", "object_bytes", "not_a_tar", "truncated", "missing"])  # fmt: skip
def test_a_damaged_archive_is_rejected_and_nothing_is_written(
    backed_up: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    platform, archive = backed_up["platform"], backed_up["archive"]
    bad = tmp_path / "bad.tar.gz"
    flip = lambda data: bytes([data[0] ^ 0xFF]) + data[1:]  # noqa: E731
    if damage == "dump_bytes":
        rewrite_member(archive, bad, "postgres.dump", flip)
    elif damage == "object_bytes":
        model_file = next(k for k in backed_up["before"].objects if k.endswith("/model.skops"))
        rewrite_member(archive, bad, f"objects/{model_file}", flip)
    elif damage == "not_a_tar":
        bad.write_text("this is not an archive\n")
    elif damage == "truncated":
        bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    expected = {"dump_bytes": "postgres.dump: sha256", "object_bytes": "model.skops: sha256",
                "not_a_tar": "not a readable tar", "truncated": "not a readable tar",
                "missing": "not found"}[damage]  # fmt: skip

    verified = run_backup("verify", str(bad))
    assert verified.returncode == 1 and expected in verified.stderr, verified.stderr
    rows_before, objects_before = db_rows(platform), bucket_objects(platform)
    forced = run_backup("restore", str(bad), "--force", "--state-dir", str(platform.state_dir))
    assert forced.returncode == 1 and expected in forced.stderr, forced.stderr
    assert db_rows(platform) == rows_before and bucket_objects(platform) == objects_before


def test_a_backup_restores_into_a_platform_with_file_artifacts(
    backed_up: dict[str, Any], make_local_platform: PlatformFactory, tmp_path: Path
) -> None:
    """S3 keys `artifacts/<path>` land as `<path>` in the folder; serving reads them from there,
    and a backup of that platform holds the same bytes."""
    artifacts = tmp_path / "mlartifacts"
    platform = make_local_platform(workers=1, artifacts="file", artifacts_dir=artifacts)
    platform.up()
    try:
        result = run_backup("restore", str(backed_up["archive"]), "--state-dir",
                            str(platform.state_dir))  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        before = backed_up["before"]
        expected = {k.removeprefix("artifacts/"): v for k, v in before.objects.items()}
        after = snapshot(platform, objects=folder_objects(artifacts))
        assert after.objects == expected
        assert after.rows == before.rows and after.predictions == before.predictions

        again = tmp_path / "from-file.tar"
        created = run_backup("create", "--state-dir", str(platform.state_dir), "--out", str(again))
        assert created.returncode == 0, created.stderr
        with tarfile.open(again) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert {o["key"]: o["sha256"] for o in manifest["objects"]} == expected
    finally:
        platform.down()
