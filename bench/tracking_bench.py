"""Benchmark: the tracking server as the work grows, ours against MLflow's stock configuration.

    python bench/tracking_bench.py                 # 10^3, 10^4, 10^5 runs; JSON, chart (< 30 min)
    python bench/tracking_bench.py --quick         # 10^3 and 10^4 only, fewer repeats (development)
    python bench/tracking_bench.py --artifacts     # also bench/artifact_bench.py, merged in the JSON
    python bench/tracking_bench.py --from-json bench/tracking_bench.json   # redraw; runs nothing

It starts one native platform (`mlstack local up`: this project's configuration) and, on the SAME
PostgreSQL server, MLflow's stock configuration: `mlflow server --backend-store-uri
postgresql://.../stock` with default settings (its own database, default workers and pool; the
same default MLflow client talks to both). Then, alternating ours/stock in one run:

- ingest: runs per second, each run as our trainers log it (create_run, one log_batch of 20
  params + 5 tags, one log_batch of 10 metrics + the tags, update_run FINISHED), from 4 client
  processes; metric points per second of one long history in `log_batch` chunks of 1,000 points,
  from 1 and from 4 client processes;
- queries, with one experiment holding 10^3, 10^4, then 10^5 runs, through plain HTTP as the UI
  issues them (`POST /ajax-api/2.0/mlflow/runs/search`): the runs table's first page (max_results
  100, `attributes.start_time DESC`, ACTIVE_ONLY: MLflow 3.17's UI bundle), the same filtered on
  a metric and ordered by a metric, the experiment page's calls on open (experiments/get, then
  that runs/search), and MlflowClient.get_metric_history of a 10^5-step metric.

Seeding: the experiment's runs are written with PostgreSQL COPY, the identical rows into both
databases (runs, tags, params, metrics, latest_metrics: the rows MLflow itself writes for such a
run), then ANALYZE in both, as autovacuum would. The REST API at the measured ingest rate would
take hours for 10^5 runs. The 10^5-step history is COPYed too (its ingest rate is measured apart).

Medians and p95 per cell, the ratio ours/stock of the medians (< 1: ours faster), JSON out and a
chart of query latency against run count. Not a test: the machine is shared; ratios side by side
in one run are what count, and the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import multiprocessing
import os
import platform as host_platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# The client prints a "View run" line per finished run: thousands of lines in the ingest rounds.
os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
                  MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")  # fmt: skip

PARAMS, METRICS, TAGS = 20, 10, 5
HISTORY_STEPS = 100_000
CHUNK = 1_000
RUNS_TABLE_PAGE = 100  # the UI's first page (MAX_RUNS_IN_SEARCH of MLflow 3.17's bundle)
FILTER_METRIC, ORDER_METRIC = "metric_0", "metric_1"
TARGETS = {"ingest_runs": 2.0, "runs_table@100000": 3.0, "metric_search@100000": 3.0}


# --- the two servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_http(
    url: str, timeout: float = 600, process: subprocess.Popen[bytes] | None = None
) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextlib.contextmanager
def ours_platform(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`mlstack local up` in a temporary state dir (the project's defaults); its env values."""
    from mlstack.local.state import read_env_file

    state_dir = Path(tempfile.mkdtemp(prefix="mlstack-tracking-bench-"))
    cmd = [sys.executable, "-m", "mlstack", "local"]
    up = ["up", "--state-dir", str(state_dir), "--mlflow-port", str(free_port()),
          "--serving-port", str(free_port()), "--s3-port", str(free_port())]  # fmt: skip
    print(f"ours: mlstack local up in {state_dir} ...", flush=True)
    try:
        subprocess.run([*cmd, *up], env=env, check=True, timeout=900, stdout=subprocess.DEVNULL)
        yield read_env_file(state_dir / "env")
    finally:
        down = subprocess.run([*cmd, "down", "--state-dir", str(state_dir)], env=env,
                              check=False, timeout=180, stdout=subprocess.DEVNULL)  # fmt: skip
        if down.returncode == 0:
            shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def stock_server(pg_uri: str, env: dict[str, str], workers: int | None) -> Iterator[str]:
    """`mlflow server` with default settings on database `stock` of the same PostgreSQL server."""
    import psycopg2

    admin = pg_uri.rsplit("/", 1)[0] + "/postgres"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS stock WITH (FORCE)")
        cursor.execute("CREATE DATABASE stock")
    conn.close()
    # The psycopg2 driver (the one installed; SQLAlchemy's bare postgresql:// now means psycopg 3).
    backend = (
        pg_uri.replace("postgresql://", "postgresql+psycopg2://", 1).rsplit("/", 1)[0] + "/stock"
    )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-stock-"))
    log = (workdir / "server.log").open("wb")
    print(f"stock: log in {workdir / 'server.log'}", flush=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
               "--host", HOST, "--port", str(port)]  # fmt: skip
    if workers:  # not stock: only when MLflow's default (4) cannot start here (see --help)
        command += ["--workers", str(workers)]
    print(f"stock: {' '.join(command[1:])} (cwd {workdir}) ...", flush=True)
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=log,
                               start_new_session=True)  # fmt: skip
    try:
        wait_http(f"http://{HOST}:{port}/health", process=process)
        yield f"http://{HOST}:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- ingest (client processes) ----------------------------------------------------------------


def log_runs(job: tuple[str, str, int]) -> float:
    """`count` runs logged the way mlstack's runner logs them; seconds taken."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    uri, experiment_id, count = job
    client = MlflowClient(uri)
    began = time.perf_counter()
    for _ in range(count):
        run = client.create_run(experiment_id)
        run_id = run.info.run_id
        tags = [RunTag(f"mlstack.tag_{i}", f"value-{i}") for i in range(TAGS)]
        now = int(time.time() * 1000)
        client.log_batch(run_id, params=[Param(f"param_{i}", str(i * 0.5)) for i in range(PARAMS)],
                         tags=tags)  # fmt: skip
        metrics = [Metric(f"metric_{i}", random.random(), now, 0) for i in range(METRICS)]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        client.set_terminated(run_id, "FINISHED")
    return time.perf_counter() - began


def log_history(job: tuple[str, str, int]) -> float:
    """`chunks` log_batch calls of 1,000 points of one metric into run `run_id`; seconds."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri, run_id, chunks = job
    client = MlflowClient(uri)
    key = f"loss_{os.getpid()}"
    began = time.perf_counter()
    for chunk in range(chunks):
        now = int(time.time() * 1000)
        points = [Metric(key, 1.0 / (1 + s), now, chunk * CHUNK + s) for s in range(CHUNK)]
        client.log_batch(run_id, metrics=points)
    return time.perf_counter() - began


def warm(_: int) -> int:
    import mlflow  # noqa: F401

    return os.getpid()


def server_tree(uri: str) -> list[Any]:
    """The `mlflow server` process listening on `uri`'s port and its descendants (workers)."""
    import psutil

    port = str(urllib.parse.urlsplit(uri).port)
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        serves = "mlflow" in command and "server" in command and "--port" in command
        if serves and command[command.index("--port") + 1] == port:
            return [process, *process.children(recursive=True)]
    raise RuntimeError(f"no mlflow server on port {port}")


def backends(database: str) -> list[Any]:
    """PostgreSQL's backend processes serving `database` (their title names it)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("postgres: ") and f" {database} " in title:
            found.append(process)
    return found


def cpu_seconds(processes: list[Any]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(Exception):  # gone since: its time is lost to both sides alike
            times = process.cpu_times()
            total += times.user + times.system
    return total


def ingest(pool: Any, uris: dict[str, str], databases: dict[str, str], rounds: int,
           runs_per_client: int, chunks: int) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Alternating ours/stock per round (order swapped each round), after a warm-up round per
    side that is not recorded. Also where the CPU of the
    runs/s phase went, per run: the server's processes, PostgreSQL's backends for that side's
    database, the 4 client processes (the same code against both)."""
    import psutil
    from mlflow import MlflowClient

    results: dict[str, dict[str, list[float]]] = {side: {} for side in uris}
    cpu: dict[str, dict[str, list[float]]] = {side: {} for side in uris}
    client_processes = psutil.Process().children()
    setups = {side: MlflowClient(uri) for side, uri in uris.items()}
    experiments = {side: c.create_experiment(f"ingest-{uuid.uuid4().hex[:8]}")
                   for side, c in setups.items()}  # fmt: skip
    # A warm-up round per side, not recorded: each server worker's first calls pay its lazy
    # imports and connections (stock's first round measured 3x the CPU per run of its second).
    for side, uri in uris.items():
        pool.map(log_runs, [(uri, experiments[side], 3)] * 4, chunksize=1)
        pool.map(log_history, [(uri, setups[side].create_run(experiments[side]).info.run_id, 2)]
                 * 4, chunksize=1)  # fmt: skip
    for round_no in range(rounds):
        order = list(uris) if round_no % 2 == 0 else list(reversed(uris))
        for side in order:
            uri, exp = uris[side], experiments[side]
            server, clients = server_tree(uri), client_processes
            before = {"server": cpu_seconds(server), "clients": cpu_seconds(clients)}
            before_pg = {p.pid: cpu_seconds([p]) for p in backends(databases[side])}
            began = time.perf_counter()
            pool.map(log_runs, [(uri, exp, runs_per_client)] * 4, chunksize=1)
            rate = 4 * runs_per_client / (time.perf_counter() - began)
            results[side].setdefault("runs_per_s_4_clients", []).append(rate)
            used = {"server": cpu_seconds(server) - before["server"],
                    "postgres": sum(cpu_seconds([p]) - before_pg.get(p.pid, 0.0)
                                    for p in backends(databases[side])),  # opened meanwhile too
                    "clients": cpu_seconds(clients) - before["clients"]}  # fmt: skip
            for name, seconds in used.items():
                cpu[side].setdefault(f"{name}_cpu_ms_per_run", []).append(
                    seconds * 1000 / (4 * runs_per_client)
                )
            for clients in (1, 4):
                run_ids = [setups[side].create_run(exp).info.run_id for _ in range(clients)]
                per_client = max(1, chunks // clients)
                began = time.perf_counter()
                pool.map(log_history, [(uri, r, per_client) for r in run_ids], chunksize=1)
                rate = clients * per_client * CHUNK / (time.perf_counter() - began)
                results[side].setdefault(f"metric_points_per_s_{clients}_clients", []).append(rate)
            print(f"  ingest round {round_no + 1} {side}: "
                  + ", ".join(f"{k} {v[-1]:.0f}" for k, v in (results[side] | cpu[side]).items()),
                  flush=True)  # fmt: skip
    return results, cpu


# --- seeding (COPY, identical rows into both databases) ----------------------------------------


class Seeder:
    """Rows of `count` more runs in experiment `experiment_id` (runs as the runner logs them)."""

    def __init__(self, seed: int = 13) -> None:
        self.random = random.Random(seed)
        self.made = 0
        self.start = int(time.time() * 1000) - 10**10

    def tables(self, count: int) -> dict[str, tuple[list[str], str]]:
        rnd = self.random
        runs, tags, params, metrics, latest = (io.StringIO() for _ in range(5))
        for _ in range(count):
            self.made += 1
            run_id = uuid.UUID(int=rnd.getrandbits(128)).hex
            start = self.start + self.made * 1000
            name = f"run-{self.made}"
            runs.write(f"{run_id}\t{name}\tLOCAL\tbench\t\\N\tbench\tFINISHED\t{start}\t"
                       f"{start + 500}\t\\N\tactive\t@ART@/{run_id}/artifacts\t@EXP@\n")  # fmt: skip
            tags.write(f"mlflow.runName\t{name}\t{run_id}\nmlflow.user\tbench\t{run_id}\n"
                       f"mlflow.source.name\tbench\t{run_id}\n")  # fmt: skip
            for i in range(TAGS):
                tags.write(f"mlstack.tag_{i}\tvalue-{i}\t{run_id}\n")
            for i in range(PARAMS):
                params.write(f"param_{i}\t{rnd.randint(0, 50) * 0.5}\t{run_id}\n")
            for i in range(METRICS):
                value = rnd.random()
                metrics.write(f"metric_{i}\t{value!r}\t{start + 400}\t{run_id}\t0\tf\n")
                latest.write(f"metric_{i}\t{value!r}\t{start + 400}\t0\tf\t{run_id}\n")
        return {
            "runs": (["run_uuid", "name", "source_type", "source_name", "entry_point_name",
                      "user_id", "status", "start_time", "end_time", "source_version",
                      "lifecycle_stage", "artifact_uri", "experiment_id"], runs.getvalue()),
            "tags": (["key", "value", "run_uuid"], tags.getvalue()),
            "params": (["key", "value", "run_uuid"], params.getvalue()),
            "metrics": (["key", "value", "timestamp", "run_uuid", "step", "is_nan"],
                        metrics.getvalue()),
            "latest_metrics": (["key", "value", "timestamp", "step", "is_nan", "run_uuid"],
                               latest.getvalue()),
        }  # fmt: skip

    @staticmethod
    def history(run_id: str, steps: int) -> dict[str, tuple[list[str], str]]:
        now = int(time.time() * 1000)
        rows = "".join(f"loss\t{1.0 / (1 + s)!r}\t{now + s}\t{run_id}\t{s}\tf\n"
                       for s in range(steps))  # fmt: skip
        last = f"loss\t{1.0 / steps!r}\t{now + steps - 1}\t{steps - 1}\tf\t{run_id}\n"
        return {
            "metrics": (["key", "value", "timestamp", "run_uuid", "step", "is_nan"], rows),
            "latest_metrics": (["key", "value", "timestamp", "step", "is_nan", "run_uuid"], last),
        }


def copy_into(db_uri: str, tables: dict[str, tuple[list[str], str]], experiment_id: str,
              artifact_root: str) -> None:  # fmt: skip
    import psycopg2

    conn = psycopg2.connect(db_uri)
    try:
        with conn, conn.cursor() as cursor:
            # No foreign-key triggers while loading rows that are consistent by construction
            # (superuser only; the same for both databases).
            cursor.execute("SET session_replication_role = replica")
            for table, (columns, text) in tables.items():
                text = text.replace("@EXP@", experiment_id).replace("@ART@", artifact_root)
                cursor.copy_expert(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(text)
                )
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("ANALYZE")
    finally:
        conn.close()


# --- queries (plain HTTP, as the UI issues them) ------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "p95": percentile(values, 0.95), "n": len(values),
            "samples": [round(v, 6) for v in values]}  # fmt: skip


def query_calls(uri: str, experiment_id: str, history_run: str) -> dict[str, Callable[[], Any]]:
    import requests
    from mlflow import MlflowClient

    session = requests.Session()
    ajax = f"{uri}/ajax-api/2.0/mlflow"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = session.post(f"{ajax}/{path}", json=body, timeout=600)
        response.raise_for_status()
        return response.json()

    def runs_table() -> int:
        body = {"experiment_ids": [experiment_id], "run_view_type": "ACTIVE_ONLY",
                "max_results": RUNS_TABLE_PAGE, "order_by": ["attributes.start_time DESC"]}  # fmt: skip
        runs = post("runs/search", body)["runs"]
        assert len(runs) == RUNS_TABLE_PAGE, len(runs)
        return len(runs)

    def metric_search() -> int:
        body = {"experiment_ids": [experiment_id], "run_view_type": "ACTIVE_ONLY",
                "max_results": RUNS_TABLE_PAGE, "filter": f"metrics.{FILTER_METRIC} > 0.5",
                "order_by": [f"metrics.`{ORDER_METRIC}` DESC"]}  # fmt: skip
        runs = post("runs/search", body)["runs"]
        assert runs, "no run matched"
        return len(runs)

    def experiment_page() -> int:
        response = session.get(f"{ajax}/experiments/get", params={"experiment_id": experiment_id},
                               timeout=60)  # fmt: skip
        response.raise_for_status()
        return runs_table()

    client = MlflowClient(uri)

    def metric_history() -> int:
        points = client.get_metric_history(history_run, "loss")
        assert len(points) == HISTORY_STEPS, len(points)
        return len(points)

    return {"runs_table": runs_table, "metric_search": metric_search,
            "experiment_page": experiment_page, "metric_history": metric_history}  # fmt: skip


def measure(calls: dict[str, dict[str, Callable[[], Any]]], names: list[str], repeats: int,
            warmup: int = 2) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Per query: `repeats` timings per side, alternating ours/stock call by call."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in names:
        samples: dict[str, list[float]] = {side: [] for side in calls}
        for i in range(warmup + repeats):
            order = list(calls) if i % 2 == 0 else list(reversed(calls))
            for side in order:
                began = time.perf_counter()
                calls[side][name]()
                if i >= warmup:
                    samples[side].append(time.perf_counter() - began)
        out[name] = samples
    return out


# --- backup and restore of ours ----------------------------------------------------------------


def time_backup_restore(state_dir: str, env: dict[str, str]) -> dict[str, float]:
    archive = Path(tempfile.mkdtemp(prefix="tracking-bench-backup-")) / "backup.tar.gz"
    base = [sys.executable, "-m", "mlstack", "backup"]
    try:
        began = time.perf_counter()
        subprocess.run([*base, "create", "--state-dir", state_dir, "--out", str(archive)],
                       env=env, check=True, timeout=1800, stdout=subprocess.DEVNULL)  # fmt: skip
        created = time.perf_counter() - began
        size = archive.stat().st_size
        began = time.perf_counter()
        subprocess.run([*base, "restore", "--state-dir", state_dir, "--force", str(archive)],
                       env=env, check=True, timeout=1800, stdout=subprocess.DEVNULL)  # fmt: skip
        return {"create_s": created, "restore_s": time.perf_counter() - began,
                "archive_bytes": size}  # fmt: skip
    finally:
        shutil.rmtree(archive.parent, ignore_errors=True)


# --- the whole run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg2  # noqa: F401
    from mlflow import MlflowClient

    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    sizes = [int(s) for s in args.sizes.split(",")]
    began = time.monotonic()
    result: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": host_platform.python_version(),
                    "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]},
        "seeding": "PostgreSQL COPY of identical rows into both databases, then ANALYZE",
        "sizes": sizes,
        "stock_workers": args.stock_workers or "MLflow default (4)",
    }  # fmt: skip
    with (
        ours_platform(env) as ours_env,
        stock_server(ours_env["MLSTACK_PG_URI"], env, args.stock_workers) as stock,
    ):
        uris = {"ours": ours_env["MLFLOW_TRACKING_URI"], "stock": stock}
        pg_base = ours_env["MLSTACK_PG_URI"].rsplit("/", 1)[0]
        dbs = {"ours": ours_env["MLSTACK_PG_URI"], "stock": pg_base + "/stock"}
        wait_http(f"{uris['ours']}/health")
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            pool.map(warm, range(4))
            print("ingest ...", flush=True)
            result["ingest"], result["ingest_cpu"] = ingest(
                pool, uris, {side: url.rsplit("/", 1)[1] for side, url in dbs.items()},
                args.ingest_rounds, args.runs_per_client, args.history_chunks)  # fmt: skip
        clients = {side: MlflowClient(uri) for side, uri in uris.items()}
        scale, history = {}, {}
        for side, client in clients.items():
            scale[side] = client.create_experiment("scale")
            history[side] = client.create_run(client.create_experiment("history")).info.run_id
            artifact_root = client.get_experiment(scale[side]).artifact_location
            copy_into(dbs[side], Seeder.history(history[side], HISTORY_STEPS), scale[side],
                      artifact_root)  # fmt: skip
        seeder = Seeder()
        queries: dict[str, Any] = {}
        seeding: dict[str, float] = {}
        for size in sizes:
            print(f"seeding to {size} runs ...", flush=True)
            tables = seeder.tables(size - seeder.made)
            for side in uris:
                artifact_root = clients[side].get_experiment(scale[side]).artifact_location
                t0 = time.perf_counter()
                copy_into(dbs[side], tables, scale[side], artifact_root)
                seeding[f"{side}@{size}"] = time.perf_counter() - t0
            calls = {side: query_calls(uris[side], scale[side], history[side]) for side in uris}
            names = ["runs_table", "metric_search", "experiment_page"]
            if size == sizes[-1]:
                names.append("metric_history")
            print(f"queries at {size} runs ...", flush=True)
            measured = measure(calls, names, args.repeats)
            for name, samples in measured.items():
                queries[f"{name}@{size}"] = samples
                print(f"  {name}@{size}: " + ", ".join(
                    f"{side} {statistics.median(v) * 1000:.0f} ms" for side, v in samples.items()),
                    flush=True)  # fmt: skip
            result["seeding_s"] = seeding
            result["queries"] = queries
            partial = args.json_out.with_suffix(".partial.json")
            partial.write_text(json.dumps(result, indent=1) + "\n")
        if args.backup:
            print("backup and restore of ours ...", flush=True)
            state_dir = ours_env["MLSTACK_STATE_DIR"]
            result["backup_restore"] = time_backup_restore(state_dir, env)
            result["backup_restore"]["runs"] = sizes[-1]
            print(f"  {result['backup_restore']}", flush=True)
        if args.artifacts:
            result["artifacts"] = artifacts_bench(env)
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    result["elapsed_s"] = time.monotonic() - began
    return result


def artifacts_bench(env: dict[str, str]) -> dict[str, Any] | None:
    """bench/artifact_bench.py (its own native platform) as a subprocess; its JSON, if written."""
    out = Path(tempfile.mkdtemp(prefix="artifact-bench-")) / "artifacts.json"
    command = [sys.executable, str(ROOT / "bench" / "artifact_bench.py"), "--sizes-mib",
               "10,500,2048", "--json-out", str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, check=False, cwd=ROOT)
    data = json.loads(out.read_text()) if out.exists() else None
    shutil.rmtree(out.parent, ignore_errors=True)
    return data if data is not None else {"error": f"exit {done.returncode}, no JSON"}


def cells(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every measured cell: per side median and p95, and ratio ours/stock of the medians.

    For rates (ingest) the ratio is ours/stock of throughput (> 1: ours faster); for latencies it
    is stock/ours as "x faster" too, so every `speedup` reads the same way."""
    table: dict[str, dict[str, Any]] = {}
    for name, samples in result.get("ingest", {}).get("ours", {}).items():
        ours, stock = samples, result["ingest"]["stock"][name]
        table[name] = {"ours": summary(ours), "stock": summary(stock), "unit": "per s",
                       "speedup": statistics.median(ours) / statistics.median(stock)}  # fmt: skip
    for name, sides in result.get("queries", {}).items():
        ours, stock = sides["ours"], sides["stock"]
        table[name] = {"ours": summary(ours), "stock": summary(stock), "unit": "s",
                       "ratio": statistics.median(ours) / statistics.median(stock),
                       "speedup": statistics.median(stock) / statistics.median(ours)}  # fmt: skip
    return table


def report(result: dict[str, Any]) -> str:
    lines = [
        "| cell | ours median (p95) | stock median (p95) | ours faster by |",
        "|---|---|---|---|",
    ]
    for name, cell in result["cells"].items():
        fmt = (
            (lambda v: f"{v:,.0f}/s")
            if cell["unit"] == "per s"
            else (lambda v: f"{v * 1000:,.0f} ms")
        )
        ours, stock = cell["ours"], cell["stock"]
        lines.append(f"| {name} | {fmt(ours['median'])} ({fmt(ours['p95'])}) | "
                     f"{fmt(stock['median'])} ({fmt(stock['p95'])}) | {cell['speedup']:.2f}x |")  # fmt: skip
    split = result.get("ingest_cpu")
    if split:
        lines += ["", "CPU per run logged (runs/s phase, medians of the rounds):", "",
                  "| processes | ours | stock | stock/ours |", "|---|---|---|---|"]  # fmt: skip
        for name in split["ours"]:
            ours_ms = statistics.median(split["ours"][name])
            stock_ms = statistics.median(split["stock"][name])
            lines.append(f"| {name.removesuffix('_cpu_ms_per_run')} | {ours_ms:.1f} ms | "
                         f"{stock_ms:.1f} ms | {stock_ms / ours_ms:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["runs_table", "metric_search", "experiment_page"]
    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        for side, style in (("ours", "o-"), ("stock", "s--")):
            medians = [result["cells"][f"{name}@{n}"][side]["median"] * 1000 for n in sizes]
            p95 = [result["cells"][f"{name}@{n}"][side]["p95"] * 1000 for n in sizes]
            ax.plot(sizes, medians, style, label=f"{side} median")
            ax.fill_between(sizes, medians, p95, alpha=0.15)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("runs in the experiment")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms; band to p95)")
    axes[0].legend()
    load = result["machine"]["loadavg_start"]
    fig.suptitle(f"Tracking queries vs run count, ours vs stock MLflow (load avg {load[0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4 runs, fewer repeats")
    parser.add_argument("--sizes", default=None, help="run counts (default 1000,10000,100000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per side and cell")
    parser.add_argument("--ingest-rounds", type=int, default=None)
    parser.add_argument("--runs-per-client", type=int, default=None)
    parser.add_argument("--history-chunks", type=int, default=None, help="1,000-point chunks")
    parser.add_argument("--no-backup", dest="backup", action="store_false",
                        help="skip timing `mlstack backup create/restore` of ours")  # fmt: skip
    parser.add_argument("--stock-workers", type=int, default=None,
                        help="give stock `--workers N` (default: none, MLflow's own 4); on an "
                        "overloaded machine uvicorn kills 4 importing workers that miss its 5 s "
                        "health ping, over and over, and stock never answers")  # fmt: skip
    parser.add_argument("--artifacts", action="store_true", help="also bench/artifact_bench.py")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench" / "tracking_bench.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "tracking_bench.png")
    parser.add_argument("--from-json", type=Path, help="redraw from a JSON; runs nothing")
    args = parser.parse_args()
    quick = args.quick
    args.sizes = args.sizes or ("1000,10000" if quick else "1000,10000,100000")
    args.repeats = args.repeats or (5 if quick else 15)
    args.ingest_rounds = args.ingest_rounds or (1 if quick else 3)
    args.runs_per_client = args.runs_per_client or (5 if quick else 15)
    args.history_chunks = args.history_chunks or (8 if quick else 20)
    if quick and args.backup:
        args.backup = False
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = run(args)
        result["cells"] = cells(result)
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
        args.json_out.with_suffix(".partial.json").unlink(missing_ok=True)
        print(f"wrote {args.json_out}")
    print(report(result))
    for key, target in TARGETS.items():
        cell = result["cells"].get(key.replace("ingest_runs", "runs_per_s_4_clients"))
        if cell:
            verdict = "met" if cell["speedup"] >= target else "NOT met"
            print(f"target {key} >= {target}x: {cell['speedup']:.2f}x {verdict}")
    chart(result, args.chart)
    print(f"wrote {args.chart}")


if __name__ == "__main__":
    main()
