"""`mlstack gc` on the native platform, checked through independent clients.

One platform of its own. A stock MLflow script (tests/stock_mlflow.py) fills two experiments: in the
first, three runs with plots and logged models, the first two registered as versions 1 and 2 of a
model whose @champion is version 2; the second experiment holds one run. Then, as a user would with
the MLflow client: all three runs of the first experiment are deleted, the third run's logged model
too, and the whole second experiment. And 1,205 orphan objects are planted in the bucket with boto3
(more than one listing page), plus one object outside MLflow's artifacts root.

Expected, read with psycopg2 and boto3: what is deleted and not used by a registered version is gone
(rows and objects); the registered versions, their runs, the champion's files and the planted
outsider are untouched; the orphans are gone; serving still answers with the champion; a second gc
deletes nothing; `--dry-run` and a too-young `--older-than` delete nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from trainer_helpers import trainer_env, wait_until_served

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gc_stock"
ORPHANS = 1205  # more than one page (1,000) of a bucket listing and of a batched delete
OUTSIDER = "elsewhere/not-mlflows.txt"


def run_gc(platform: LocalPlatform, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mlstack gc ARGS --state-dir DIR`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mlstack", "gc", *args, "--state-dir", str(platform.state_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )


def stock_script(platform: LocalPlatform, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "stock_mlflow.py"), *args],
        env=trainer_env(platform),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def sql(platform: LocalPlatform, query: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(platform.pg_uri)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params or None)
            return list(cur.fetchall())
    finally:
        conn.close()


def keys(platform: LocalPlatform) -> set[str]:
    s3 = platform.s3()
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket):
        found |= {item["Key"] for item in page.get("Contents", [])}
    return found


def key_prefix(platform: LocalPlatform, uri: str) -> str:
    """`mlflow-artifacts:/1/x/artifacts` -> `artifacts/1/x/artifacts/` (the bucket's layout)."""
    root = platform.env.get("MLSTACK_ARTIFACTS_PREFIX", "").strip("/")
    path = uri.removeprefix("mlflow-artifacts:").lstrip("/")
    return f"{root}/{path}/" if root else f"{path}/"


def under(found: set[str], prefix: str) -> set[str]:
    return {key for key in found if key.startswith(prefix)}


def rows_of_run(platform: LocalPlatform, run_id: str) -> dict[str, int]:
    tables = ("runs", "metrics", "latest_metrics", "params", "tags")
    return {
        t: sql(platform, f"SELECT count(*) FROM {t} WHERE run_uuid = %s", run_id)[0][0]
        for t in tables
    }


def predict(platform: LocalPlatform) -> requests.Response:
    url = f"{platform.serving_url}/models/{MODEL}/invocations"
    payload = {"inputs": [[0.2, 0.9, 0.4]]}
    wait_until_served(url, "2", payload)
    return requests.post(url, json=payload, timeout=30)


@pytest.fixture(scope="module")
def collected(make_local_platform: PlatformFactory) -> dict[str, Any]:
    from mlflow import MlflowClient

    platform = make_local_platform(workers=1)
    platform.up()
    kept = stock_script(platform, "--experiment", "gc-kept", "--runs", "3", "--model", MODEL)
    gone = stock_script(platform, "--experiment", "gc-gone", "--runs", "1")
    served_before = predict(platform)
    assert served_before.status_code == 200, served_before.text

    client = MlflowClient(tracking_uri=platform.tracking_uri)
    for run in kept["runs"]:
        client.delete_run(run["run_id"])
    client.delete_logged_model(kept["runs"][2]["model_id"])
    client.delete_experiment(gone["experiment_id"])

    s3 = platform.s3()
    root = platform.env.get("MLSTACK_ARTIFACTS_PREFIX", "").strip("/")
    orphan_keys = [
        f"{root}/{kept['experiment_id']}/0123456789abcdef/artifacts/part-{n:05d}.txt"
        for n in range(ORPHANS)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda k: s3.put_object(Bucket=platform.bucket, Key=k, Body=b"x"), orphan_keys)
        )
    s3.put_object(Bucket=platform.bucket, Key=OUTSIDER, Body=b"not MLflow's")

    runs = {r["run_id"]: r for r in kept["runs"] + gone["runs"]}
    uris = dict(sql(platform, "SELECT run_uuid, artifact_uri FROM runs"))
    models = dict(sql(platform, "SELECT model_id, artifact_location FROM logged_models"))
    versions = sql(platform, "SELECT version, run_id, storage_location FROM model_versions")
    state: dict[str, Any] = {
        "platform": platform,
        "kept": kept,
        "gone": gone,
        "orphan_keys": set(orphan_keys),
        "run_prefix": {r: key_prefix(platform, uris[r]) for r in runs},
        "model_prefix": {m: key_prefix(platform, loc) for m, loc in models.items()},
        "versions": versions,
        "aliases": sql(platform, "SELECT name, alias, version FROM registered_model_aliases"),
        "run_rows": {r: rows_of_run(platform, r) for r in runs},
        "served_before": served_before.json(),
    }

    state["young"] = run_gc(platform, "--orphans", "--older-than", "1d")
    state["after_young"] = keys(platform)
    state["dry"] = run_gc(platform, "--orphans", "--dry-run")
    state["after_dry"] = keys(platform)
    state["before"] = keys(platform)
    state["real"] = run_gc(platform, "--orphans")
    state["after"] = keys(platform)
    state["again"] = run_gc(platform, "--orphans")
    return state


def test_dry_run_and_too_young_delete_nothing_and_dry_run_counts(collected: dict[str, Any]) -> None:
    young, dry = collected["young"], collected["dry"]
    assert young.returncode == 0, young.stderr
    assert dry.returncode == 0, dry.stderr
    assert collected["after_young"] == collected["after_dry"] == collected["before"]
    assert f"would delete orphans: {ORPHANS} objects, {ORPHANS} bytes" in dry.stdout, dry.stdout
    assert "would delete 2 runs" in dry.stdout, dry.stdout
    assert "would delete 2 logged models" in dry.stdout
    assert "would delete 1 experiments" in dry.stdout
    assert "dry run: nothing deleted" in dry.stdout
    assert "deleting 0 runs" in young.stdout and "orphans: 0 objects" in young.stdout, young.stdout


def test_deleted_runs_models_and_experiment_are_gone_rows_and_objects(
    collected: dict[str, Any],
) -> None:
    real, platform, after = collected["real"], collected["platform"], collected["after"]
    assert real.returncode == 0, real.stdout + real.stderr
    kept, gone = collected["kept"], collected["gone"]
    unregistered_run = kept["runs"][2]["run_id"]
    gone_run = gone["runs"][0]["run_id"]
    for run_id in (unregistered_run, gone_run):
        assert collected["run_rows"][run_id]["metrics"] > 0
        assert set(rows_of_run(platform, run_id).values()) == {0}, run_id
        assert not under(after, collected["run_prefix"][run_id]), run_id
        assert under(collected["before"], collected["run_prefix"][run_id]), run_id
    for model_id in (kept["runs"][2]["model_id"], gone["runs"][0]["model_id"]):
        assert not sql(platform, "SELECT 1 FROM logged_models WHERE model_id = %s", model_id)
        assert not under(after, collected["model_prefix"][model_id]), model_id
    experiment = gone["experiment_id"]
    assert not sql(platform, "SELECT 1 FROM experiments WHERE experiment_id = %s", int(experiment))


def test_registered_versions_their_runs_and_the_champion_are_untouched(
    collected: dict[str, Any],
) -> None:
    platform, before, after = collected["platform"], collected["before"], collected["after"]
    assert (
        sql(platform, "SELECT version, run_id, storage_location FROM model_versions")
        == (collected["versions"])
    )
    assert (
        sql(platform, "SELECT name, alias, version FROM registered_model_aliases")
        == (collected["aliases"])
    )
    assert (MODEL, "champion", 2) in [(n, a, int(v)) for n, a, v in collected["aliases"]]
    for version, run_id, location in collected["versions"]:
        files = under(before, key_prefix(platform, location))
        assert any(k.endswith("/MLmodel") for k in files), (version, files)
        assert files <= after, f"version {version} lost files"
        assert rows_of_run(platform, run_id) == collected["run_rows"][run_id], run_id
    # A deleted run's logged model that nobody deleted stays (MLflow 3 keeps models first-class).
    live_model = collected["kept"]["runs"][1]["model_id"]
    assert sql(platform, "SELECT 1 FROM logged_models WHERE model_id = %s", live_model)
    assert OUTSIDER in after


def test_orphans_are_gone_and_nothing_else(collected: dict[str, Any]) -> None:
    before, after = collected["before"], collected["after"]
    assert collected["orphan_keys"] <= before
    assert not (collected["orphan_keys"] & after)
    kept, gone = collected["kept"], collected["gone"]
    went = set(collected["orphan_keys"])
    for run_id in (kept["runs"][2]["run_id"], gone["runs"][0]["run_id"]):
        went |= under(before, collected["run_prefix"][run_id])
    for model_id in (kept["runs"][2]["model_id"], gone["runs"][0]["model_id"]):
        went |= under(before, collected["model_prefix"][model_id])
    assert after == before - went
    assert f"deleting orphans: {ORPHANS} objects" in collected["real"].stdout


def test_serving_still_answers_and_a_second_gc_deletes_nothing(collected: dict[str, Any]) -> None:
    answer = predict(collected["platform"])
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("x-model-version") == "2"
    assert answer.json() == collected["served_before"]
    again = collected["again"]
    assert again.returncode == 0, again.stderr
    assert "done: 0 runs, 0 logged models, 0 experiments, 0 objects (0 bytes)" in again.stdout


def test_bad_duration_is_a_usage_error(collected: dict[str, Any]) -> None:
    result = run_gc(collected["platform"], "--older-than", "soon")
    assert result.returncode == 2
    assert "not a duration" in result.stderr
