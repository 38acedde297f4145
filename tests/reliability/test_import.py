"""`mlstack import` into the native platform, from data a stock MLflow script made.

Three sources, made by tests/stock_mlflow.py (no mlstack): a file store (`./mlruns`, as MLflow
3.17 writes it with `MLFLOW_ALLOW_FILE_STORE=true`), a SQLite `mlflow.db` with its `./mlruns`
artifact folder, and another tracking server (a stock `mlflow server` on a free loopback port,
tests/stock_server.py: SQLite backend, its own artifact root; imported by its URL). Each: one experiment with three runs (params, a 5-step metric history, a plot,
`mlflow.sklearn.log_model`) and a registered model with two versions (@champion on v2, tags).

Both sides are read with independent clients: the source's files and `sqlite3` (for the server:
its backend database and artifact folder), the platform's
PostgreSQL with psycopg2 and its bucket with boto3. Every run's params, tags, status, times, full
metric history and artifact bytes arrive; logged models with their files; versions with tags and
the alias; serving answers with the imported champion; a second import adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from stock_server import stock_server
from trainer_helpers import wait_until_served

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
# source kind -> experiment name
SOURCES = {"mlruns": "from-mlruns", "sqlite": "from-sqlite", "server": "from-server"}
MODELS = {"mlruns": "mlruns_model", "sqlite": "sqlite_model", "server": "server_model"}


def make_sources(base: Path, server_url: str) -> dict[str, dict[str, Any]]:
    """The three stock sources, made at the same time (three processes); the server's files are
    in base/server (its backend `mlflow.db`, its artifact root `mlruns`)."""
    env_common = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PATH": "/usr/bin:/bin",
    }
    plans = {
        "mlruns": {"MLFLOW_TRACKING_URI": "file:./mlruns", "MLFLOW_ALLOW_FILE_STORE": "true"},
        "sqlite": {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
        "server": {"MLFLOW_TRACKING_URI": server_url},
    }
    running = {}
    for kind, env in plans.items():
        folder = base / kind
        folder.mkdir(exist_ok=True)
        command = [sys.executable, str(ROOT / "tests" / "stock_mlflow.py"),
                   "--experiment", SOURCES[kind], "--runs", "3", "--model", MODELS[kind]]  # fmt: skip
        running[kind] = (folder, subprocess.Popen(command, cwd=folder, env={**env_common, **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    made = {}
    for kind, (folder, process) in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{kind}:\n{out}\n{err}"
        made[kind] = {"folder": folder, **json.loads(out.strip().splitlines()[-1])}
    return made


# --- the sources, read without MLflow ----------------------------------------------------------


def source_runs(kind: str, source: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """run id -> {name, status, start, end, params, tags, metrics (set of points), artifacts}."""
    folder: Path = source["folder"]
    runs = {}
    for run in source["runs"]:
        run_id = run["run_id"]
        artifacts = folder / "mlruns" / str(source["experiment_id"]) / run_id / "artifacts"
        if kind == "mlruns":
            run_dir = artifacts.parent
            meta = dict(
                line.split(": ", 1)
                for line in (run_dir / "meta.yaml").read_text().splitlines()
                if ": " in line
            )
            params = {p.name: p.read_text() for p in (run_dir / "params").iterdir()}
            tags = {str(t.relative_to(run_dir / "tags")): t.read_text()
                    for t in (run_dir / "tags").rglob("*") if t.is_file()}  # fmt: skip
            metrics = set()
            for path in (run_dir / "metrics").iterdir():
                for line in path.read_text().splitlines():
                    timestamp, value, step = line.split()
                    metrics.add((path.name, float(value), int(timestamp), int(step)))
            status = {"3": "FINISHED"}.get(meta["status"].strip(), meta["status"].strip())
            info = {"name": meta["run_name"].strip(), "status": status,
                    "start": int(meta["start_time"]), "end": int(meta["end_time"])}  # fmt: skip
        else:  # sqlite, or the server's SQLite backend
            db = sqlite3.connect(folder / "mlflow.db")
            name, status, start, end = db.execute(
                "SELECT name, status, start_time, end_time FROM runs WHERE run_uuid = ?", (run_id,)
            ).fetchone()
            params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
            metrics = set(db.execute(
                "SELECT key, value, timestamp, step FROM metrics WHERE run_uuid = ?", (run_id,)))  # fmt: skip
            db.close()
            info = {"name": name, "status": status, "start": start, "end": end}
        runs[run_id] = {**info, "params": params, "tags": tags, "metrics": metrics,
                        "artifacts": folder_files(artifacts)}  # fmt: skip
    return runs


def folder_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}  # fmt: skip


def source_model_files(source: dict[str, Any], model_id: str) -> dict[str, str]:
    folder = source["folder"] / "mlruns" / str(source["experiment_id"]) / "models" / model_id
    return folder_files(folder / "artifacts")


# --- the platform, read without MLflow --------------------------------------------------------


def sql(platform: LocalPlatform, query: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(platform.pg_uri)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params or None)
            return list(cur.fetchall())
    finally:
        conn.close()


def bucket_files(platform: LocalPlatform, uri: str) -> dict[str, str]:
    """{relative path: sha256} of the objects under an `mlflow-artifacts:/...` folder."""
    root = platform.env.get("MLSTACK_ARTIFACTS_PREFIX", "").strip("/")
    prefix = f"{root}/{uri.removeprefix('mlflow-artifacts:').strip('/')}/"
    s3, found = platform.s3(), {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=platform.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=platform.bucket, Key=item["Key"])["Body"].read()
            found[item["Key"].removeprefix(prefix)] = hashlib.sha256(body).hexdigest()
    return found


def platform_run(platform: LocalPlatform, source_run_id: str) -> dict[str, Any]:
    rows = sql(platform, "SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time, "
               "r.artifact_uri FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
               "WHERE t.key = 'mlstack.import.source_run' AND t.value = %s "
               "AND r.lifecycle_stage = 'active'", source_run_id)  # fmt: skip
    assert len(rows) == 1, f"{source_run_id}: {len(rows)} imported runs"
    run_id, name, status, start, end, uri = rows[0]
    return {
        "name": name, "status": status, "start": start, "end": end,
        "params": dict(sql(platform, "SELECT key, value FROM params WHERE run_uuid = %s", run_id)),
        "tags": dict(sql(platform, "SELECT key, value FROM tags WHERE run_uuid = %s", run_id)),
        "metrics": set(sql(platform, "SELECT key, value, timestamp, step FROM metrics "
                           "WHERE run_uuid = %s", run_id)),
        "artifacts": bucket_files(platform, uri),
    }  # fmt: skip


def run_import(platform: LocalPlatform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlstack", "import", *args, "--state-dir", str(platform.state_dir)],
        capture_output=True, text=True, timeout=900, check=False, cwd=ROOT,
        env={**platform.env},
    )  # fmt: skip


def counts(platform: LocalPlatform) -> dict[str, int]:
    tables = ("experiments", "runs", "metrics", "params", "logged_models", "model_versions",
              "registered_model_aliases")  # fmt: skip
    return {t: sql(platform, f"SELECT count(*) FROM {t}")[0][0] for t in tables}


@pytest.fixture(scope="module")
def imported(make_local_platform: PlatformFactory, tmp_path_factory: Any) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("sources")
    platform = make_local_platform(workers=1)
    platform.up()
    with stock_server(base / "server") as server_url:
        sources = make_sources(base, server_url)
        results = {
            "mlruns": run_import(platform, str(sources["mlruns"]["folder"] / "mlruns")),
            "sqlite": run_import(platform, str(sources["sqlite"]["folder"] / "mlflow.db")),
            "server": run_import(platform, server_url),
        }
        after_first = counts(platform)
        again = {
            "mlruns": run_import(platform, str(sources["mlruns"]["folder"] / "mlruns")),
            "sqlite": run_import(
                platform, f"sqlite:///{sources['sqlite']['folder'] / 'mlflow.db'}"
            ),
            "server": run_import(platform, server_url),
        }
    return {"platform": platform, "sources": sources, "results": results, "again": again,
            "after_first": after_first, "after_again": counts(platform)}  # fmt: skip


@pytest.mark.parametrize("kind", list(SOURCES))
def test_import_succeeds_and_verifies(imported: dict[str, Any], kind: str) -> None:
    result = imported["results"][kind]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "import: runs: 3 imported, 0 already there" in result.stdout, result.stdout
    assert "import: versions: 2 imported" in result.stdout
    assert "import: verified" in result.stdout


@pytest.mark.parametrize("kind", list(SOURCES))
def test_runs_arrive_with_params_tags_times_metric_histories_and_artifacts(
    imported: dict[str, Any], kind: str
) -> None:
    platform, source = imported["platform"], imported["sources"][kind]
    for run_id, want in source_runs(kind, source).items():
        have = platform_run(platform, run_id)
        for field in ("name", "status", "start", "end", "params", "metrics"):
            assert have[field] == want[field], (kind, run_id, field)
        assert len(want["metrics"]) >= 6  # 5 loss steps + accuracy
        for key, value in want["tags"].items():
            if key not in ("mlflow.log-model.history",):
                assert have["tags"].get(key) == value, (kind, run_id, key)
        assert any(k.endswith(".png") for k in want["artifacts"])
        assert have["artifacts"] == want["artifacts"], (kind, run_id)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_logged_models_versions_tags_and_alias_arrive(imported: dict[str, Any], kind: str) -> None:
    platform, source, name = imported["platform"], imported["sources"][kind], MODELS[kind]
    for run in source["runs"]:
        rows = sql(platform, "SELECT m.model_id, m.artifact_location, m.status FROM logged_models m "
                   "JOIN logged_model_tags t ON t.model_id = m.model_id "
                   "WHERE t.tag_key = 'mlstack.import.source_model' AND t.tag_value = %s",
                   run["model_id"])  # fmt: skip
        assert len(rows) == 1, run["model_id"]
        files = bucket_files(platform, rows[0][1])
        assert "MLmodel" in files and files == source_model_files(source, run["model_id"])
    versions = sql(platform, "SELECT v.version, t.value FROM model_versions v JOIN "
                   "model_version_tags t ON t.name = v.name AND t.version = v.version "
                   "WHERE v.name = %s AND t.key = 'mlstack.import.source_version' "
                   "ORDER BY v.version", name)  # fmt: skip
    assert [(int(v), s) for v, s in versions] == [(1, "1"), (2, "2")]
    assert sql(platform, "SELECT value FROM model_version_tags WHERE name = %s AND version = 1 "
               "AND key = 'validated'", name) == [("yes",)]  # fmt: skip
    assert sql(platform, "SELECT value FROM registered_model_tags WHERE name = %s AND key = 'owner'", name) == [("forecasting",)]  # fmt: skip
    assert sql(platform, "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
               name) == [("champion", 2)]  # fmt: skip


def test_serving_answers_with_the_imported_champion(imported: dict[str, Any]) -> None:
    platform = imported["platform"]
    url = f"{platform.serving_url}/models/{MODELS['sqlite']}/invocations"
    payload = {"inputs": [[0.2, 0.9, 0.4]]}
    wait_until_served(url, "2", payload)
    answer = requests.post(url, json=payload, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1, answer.text


@pytest.mark.parametrize("kind", list(SOURCES))
def test_a_second_import_adds_nothing(imported: dict[str, Any], kind: str) -> None:
    result = imported["again"][kind]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "import: runs: 0 imported, 3 already there" in result.stdout, result.stdout
    assert "import: logged models: 0 imported, 3 already there" in result.stdout
    assert "import: versions: 0 imported, 2 already there" in result.stdout
    assert imported["after_again"] == imported["after_first"]


def test_a_missing_source_is_a_clear_error(imported: dict[str, Any], tmp_path: Path) -> None:
    result = run_import(imported["platform"], str(tmp_path / "nothing-here"))
    assert result.returncode == 1
    assert "not a folder (file store), a SQLite file" in result.stderr
