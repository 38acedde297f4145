"""Fault injection and bad input on a dedicated local platform (the shared one stays healthy).

Each fault is injected the way it happens for real, through the platform's own pid files in
DIR/run/: the MLflow server or SeaweedFS SIGKILLed (the whole process group), PostgreSQL given a
fast shutdown (SIGINT to the postmaster: every session cut); everything is brought back with
`mlstack local up`, which restarts only what is down. Faults hit a trainer at a known moment: the test reads the
trainer's output and strikes when it prints the line that starts the step under test.

After every fault the platform's state is checked through independent clients: no run left
RUNNING, no duplicate run, and every registered model version's files in the bucket. Bad input
(the issue's table) is checked against the same platform: exit 2, file and key named, no run.

Run with `-s` to see what happened: when each fault struck, how long the restart and the
trainer's retries took.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import psutil
import pytest
import requests

from mlstack.local.processes import ProcessRecord

if TYPE_CHECKING:
    from conftest import LocalPlatform, PlatformFactory

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
TRAINER_TIMEOUT_SECONDS = 300
LINE_TIMEOUT_SECONDS = 120
SERVING_WAIT_SECONDS = 90
DIABETES_COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
DIABETES_ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]
# A sweep long enough to be struck in its middle: 4 child runs, each several requests.
SWEEP_ARGS = ("--set", "n_estimators=200", "--set", 'sweep={"max_depth": [2, 3, 4, 5]}')
SWEEP_RUN_NAMES = {"random_forest_model-sweep", *(f"random_forest_model-{i}" for i in range(1, 5))}


def say(message: str) -> None:
    """Timings and what MLflow did, for `pytest -s` and for failure reports."""
    print(f"[faults] {message}", flush=True)


# --- the platform and its services ----------------------------------------------------------


@pytest.fixture(scope="module")
def platform(make_local_platform: PlatformFactory) -> Iterator[LocalPlatform]:
    """A platform of this module's own, brought down when the module is done. One server worker:
    a restart takes half as long (the retry windows below are sized for it)."""
    started = time.monotonic()
    platform = make_local_platform(workers=1)
    platform.up()
    say(f"platform up in {time.monotonic() - started:.1f} s")
    try:
        yield platform
    finally:
        platform.down()


@pytest.fixture
def faults(platform: LocalPlatform) -> Iterator[Faults]:
    """Injects faults; afterwards, whatever happened, every service runs again."""
    injector = Faults(platform)
    try:
        yield injector
    finally:
        injector.kill_trainers()
        if injector.broken:
            platform.up()


@dataclass
class Faults:
    platform: LocalPlatform
    broken: bool = False
    trainers: list[Trainer] = field(default_factory=list)

    def record(self, service: str) -> ProcessRecord:
        record = ProcessRecord.read(self.platform.state_dir / "run" / f"{service}.pid")
        assert record is not None and record.live_process() is not None, f"{service} not running"
        return record

    def kill(self, service: str) -> None:
        """SIGKILL the service's process group (the platform starts each in its own session)."""
        record = self.record(service)
        process = record.live_process()
        assert process is not None
        family = [process, *process.children(recursive=True)]
        self.broken = True
        os.killpg(record.pid, signal.SIGKILL)
        psutil.wait_procs(family, timeout=15)

    def stop_postgres(self) -> None:
        """A fast shutdown, as `pg_ctl stop -m fast` asks for: SIGINT to the postmaster (its pid
        file), which ends every session at once. (pg_ctl itself needs the data dir's path to be
        traversable by PostgreSQL's user, which another pytest session resets: see the report.)"""
        process = self.record("postgres").live_process()
        assert process is not None
        self.broken = True
        process.send_signal(signal.SIGINT)
        _, alive = psutil.wait_procs([process], timeout=30)
        assert not alive, "postgres did not shut down within 30 s"

    def restore(self) -> float:
        """`mlstack local up`: restarts only what is down. Returns how long it took."""
        started = time.monotonic()
        self.platform.up()
        self.broken = False
        return time.monotonic() - started

    def trainer(self, model: str, *args: str, **env: str) -> Trainer:
        trainer = Trainer.start(self.platform, model, list(args), env)
        self.trainers.append(trainer)
        return trainer

    def kill_trainers(self) -> None:
        for trainer in self.trainers:
            if trainer.process.poll() is None:
                trainer.process.kill()
                trainer.process.wait(timeout=30)


# --- trainers, watched line by line ---------------------------------------------------------


@dataclass
class Trained:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def collect(stream: Any, lines: list[str], closed: list[float]) -> None:
    """Append each line as it comes (the test watches for lines while the trainer runs)."""
    for line in stream:
        lines.append(line)
    closed.append(time.monotonic())


@dataclass
class Trainer:
    """`python <model>/train.py ...` as a user runs it (no S3 credentials), output watched."""

    process: subprocess.Popen[str]
    started: float
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)  # when each output stream ended

    @classmethod
    def start(
        cls, platform: LocalPlatform, model: str, args: list[str], env: dict[str, str]
    ) -> Trainer:
        hidden = ("AWS_", "MLSTACK_S3_", "MLFLOW_S3_")
        environ = {k: v for k, v in platform.env.items() if not k.startswith(hidden)}
        process = subprocess.Popen(
            [sys.executable, str(ROOT / model / "train.py"), *args],
            env={**environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        trainer = cls(process, time.monotonic())
        for stream, into in ((process.stdout, trainer.lines), (process.stderr, trainer.errors)):
            reader = threading.Thread(
                target=collect, args=(stream, into, trainer.closed), daemon=True
            )
            reader.start()
            trainer.readers.append(reader)
        return trainer

    def printed(self, marker: str) -> bool:
        return any(marker in line for line in list(self.lines))

    def wait_for_line(self, marker: str, timeout: float = LINE_TIMEOUT_SECONDS) -> float:
        """Block until the trainer prints `marker`; returns seconds since it started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.printed(marker):
                return time.monotonic() - self.started
            if self.process.poll() is not None:
                result = self.finish()
                if self.printed(marker):
                    return time.monotonic() - self.started
                pytest.fail(f"trainer ended before printing {marker!r}: {finished(result)}")
            time.sleep(0.05)
        pytest.fail(f"trainer did not print {marker!r} in {timeout:.0f} s")

    def finish(self, timeout: float = TRAINER_TIMEOUT_SECONDS) -> Trained:
        returncode = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        seconds = max(self.closed, default=time.monotonic()) - self.started
        return Trained(returncode, "".join(self.lines), "".join(self.errors), seconds)


def finished(trained: Trained) -> str:
    """What a failed assertion shows about a trainer."""
    return f"exit {trained.returncode}\n--- stdout\n{trained.stdout}\n--- stderr\n{trained.stderr}"


# --- independent checks: PostgreSQL and the bucket -------------------------------------------


def query(platform: LocalPlatform, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A fresh connection each time: PostgreSQL itself is restarted in this module."""
    import psycopg2

    conn = psycopg2.connect(platform.pg_uri, connect_timeout=10)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        conn.close()


def runs_in(platform: LocalPlatform, experiment: str) -> list[tuple[str, str, str]]:
    """(run id, name, status) of every run of an experiment."""
    return query(
        platform,
        "SELECT r.run_uuid, r.name, r.status FROM runs r JOIN experiments e"
        " ON r.experiment_id = e.experiment_id WHERE e.name = %s ORDER BY r.start_time",
        experiment,
    )


def versions_of_runs(platform: LocalPlatform, run_ids: list[str]) -> list[tuple[str, str]]:
    if not run_ids:
        return []
    return query(
        platform,
        "SELECT name, version FROM model_versions WHERE run_id = ANY(%s)",
        run_ids,
    )


def files_under(platform: LocalPlatform, location: str) -> set[str]:
    """File names in the bucket under a `mlflow-artifacts:/...` location."""
    prefix = f"{platform.env['MLSTACK_ARTIFACTS_PREFIX']}/{location.split(':', 1)[1].lstrip('/')}/"
    names: set[str] = set()
    pages = platform.s3().get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=platform.bucket, Prefix=prefix):
        names |= {obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", [])}
    return names


def assert_consistent(platform: LocalPlatform) -> None:
    """The invariants every fault must keep, over the whole platform."""
    running = query(platform, "SELECT run_uuid, name FROM runs WHERE status = 'RUNNING'")
    assert not running, f"runs left RUNNING: {running}"
    versions = query(
        platform,
        "SELECT name, version, storage_location FROM model_versions ORDER BY name, version",
    )
    for name, version, location in versions:
        files = files_under(platform, location)
        assert {"MLmodel", "model.skops"} <= files, f"{name} v{version} at {location}: {files}"


def assert_one_run_per_name(runs: list[tuple[str, str, str]], expected: set[str]) -> None:
    counts = Counter(name for _, name, _ in runs)
    assert set(counts) == expected, f"runs: {runs}"
    duplicates = {name: n for name, n in counts.items() if n > 1}
    assert not duplicates, f"duplicate runs: {duplicates}"


def api(platform: LocalPlatform, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{platform.tracking_uri}/api/2.0/mlflow/{path}",
                            timeout=30, **kwargs)  # fmt: skip


# --- bad input: exit 2, the file and key named, no run created -------------------------------


def _params(model: str, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((ROOT / model / "params.json").read_text())
    return {**raw, **changes}


CSV_OK = "a,b,y\n" + "".join(f"{i},{i % 3},{i * 2}\n" for i in range(20))
CSV_TEXT = "a,b,y\n" + "".join(f"{i},x{i},{i * 2}\n" for i in range(20))

# (case, params.json content (a str is written as is), CSV written beside it, key, phrase)
BAD_INPUT: list[tuple[str, Any, str | None, str | None, str]] = [
    ("invalid JSON", '{"alpha": 1.0,\n oops}', None, None, "invalid JSON at line 2"),
    ("unknown key", _params("linear_model", alhpa=1.0), None, "alhpa", "unknown key"),
    ("wrong type", _params("linear_model", alpha="0.5"), None, "alpha", "valid number"),
    ("out of range", _params("linear_model", alpha=-1), None, "alpha", "greater than or equal to 0"),
    ("missing data file", _params("linear_model", data={"path": "gone.csv", "target": "y"}),
     None, "data.path", "file not found"),
    ("missing target column", _params("linear_model", data={"path": "data.csv", "target": "label"}),
     CSV_OK, "data.target", "column 'label' not in"),
    ("non-numeric features", _params("linear_model", data={"path": "data.csv", "target": "y"}),
     CSV_TEXT, "data.path", "non-numeric feature columns"),
]  # fmt: skip


@dataclass
class BadInputBatch:
    """Every bad-input case's params file and outcome, and (runs, experiments) before and after."""

    outcomes: dict[str, tuple[Path, Trained]]
    counts_before: tuple[Any, ...]
    counts_after: tuple[Any, ...]


def run_trainer_in_process(platform: LocalPlatform, argv: list[str]) -> Trained:
    """linear_model's entry point, in this process, pointed at the platform: the same code path as
    `python linear_model/train.py` without paying a process start per case (tests/unit runs the
    real command once)."""
    from mlstack.params import LinearParams
    from mlstack.runner import main
    from mlstack.settings import get_settings

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    get_settings.cache_clear()
    try:
        with (
            mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": platform.tracking_uri}),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main(ROOT / "linear_model", LinearParams, lambda p: None, argv)
    finally:
        get_settings.cache_clear()
    return Trained(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


@pytest.fixture(scope="module")
def bad_input(platform: LocalPlatform, tmp_path_factory: pytest.TempPathFactory) -> BadInputBatch:
    count = "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM experiments)"
    before = query(platform, count)[0]
    outcomes = {}
    for case, content, csv, _, _ in BAD_INPUT:
        folder = tmp_path_factory.mktemp("bad-input")
        params_file = folder / "params.json"
        params_file.write_text(content if isinstance(content, str) else json.dumps(content))
        if csv is not None:
            (folder / "data.csv").write_text(csv)
        argv = ["--params", str(params_file), "--experiment", "fault-bad-input"]
        outcomes[case] = (params_file, run_trainer_in_process(platform, argv))
    return BadInputBatch(outcomes, before, query(platform, count)[0])


@pytest.mark.parametrize(("case", "key", "phrase"), [(c, k, p) for c, _, _, k, p in BAD_INPUT])
def test_bad_input_exits_2_naming_file_and_key_and_creates_no_run(
    bad_input: BadInputBatch, case: str, key: str | None, phrase: str
) -> None:
    params_file, trained = bad_input.outcomes[case]
    assert trained.returncode == 2, finished(trained)
    assert str(params_file) in trained.stderr, finished(trained)
    if key is not None:
        assert f"'{key}'" in trained.stderr, finished(trained)
    assert phrase in trained.stderr, finished(trained)
    assert trained.stdout == "", "bad input must fail before any work"
    assert bad_input.counts_after == bad_input.counts_before, "a run or experiment was created"


# --- the MLflow server killed during a run ---------------------------------------------------


def test_server_killed_mid_sweep_the_trainer_retries_and_completes(
    platform: LocalPlatform, faults: Faults
) -> None:
    experiment = "fault-server-killed"
    trainer = faults.trainer("random_forest_model", *SWEEP_ARGS, "--experiment", experiment,
                             MLSTACK_RETRY_WINDOW_SECONDS="120")  # fmt: skip
    struck = trainer.wait_for_line("fitting random_forest_model-2")
    faults.kill("mlflow")
    time.sleep(1)  # the trainer retries against a dead port meanwhile, and during the restart
    restart = faults.restore()
    trained = trainer.finish()
    say(f"server killed {struck:.1f} s into the sweep, back {1 + restart:.1f} s later; "
        f"trainer exited {trained.returncode} after {trained.seconds:.1f} s")  # fmt: skip

    assert trained.returncode == 0, finished(trained)
    runs = runs_in(platform, experiment)
    assert_one_run_per_name(runs, SWEEP_RUN_NAMES)
    assert {status for _, _, status in runs} == {"FINISHED"}, runs
    versions = versions_of_runs(platform, [run_id for run_id, _, _ in runs])
    assert len(versions) == 1, f"one registered version per sweep, got {versions}"
    assert_consistent(platform)


def test_server_down_past_the_window_fails_the_run_and_marks_it_failed_once_back(
    platform: LocalPlatform, faults: Faults
) -> None:
    """Down longer than the retry window: the run fails; the trainer keeps trying to mark its runs
    FAILED for another window, and does so as soon as the server is back."""
    experiment = "fault-server-down-too-long"
    trainer = faults.trainer("random_forest_model", *SWEEP_ARGS, "--experiment", experiment,
                             MLSTACK_RETRY_WINDOW_SECONDS="30")  # fmt: skip
    trainer.wait_for_line("fitting random_forest_model-2")
    faults.kill("mlflow")
    gave_up = trainer.wait_for_line("cannot mark run(s) FAILED")
    restart = faults.restore()
    trained = trainer.finish()
    say(f"request retries gave up {gave_up:.1f} s into the run; server back {restart:.1f} s "
        f"later; trainer exited {trained.returncode} after {trained.seconds:.1f} s")  # fmt: skip

    assert trained.returncode == 1, finished(trained)
    assert "lost the tracking server" in trained.stderr, finished(trained)
    assert "was marked FAILED" in trained.stderr, finished(trained)
    runs = runs_in(platform, experiment)
    assert runs and runs[0][1] == "random_forest_model-sweep"
    statuses = {name: status for _, name, status in runs}
    assert statuses["random_forest_model-sweep"] == "FAILED", runs
    assert statuses["random_forest_model-2"] == "FAILED", runs
    assert len(runs) == len(statuses), f"duplicate runs: {runs}"
    assert versions_of_runs(platform, [run_id for run_id, _, _ in runs]) == []
    assert_consistent(platform)


# --- PostgreSQL restarted under a running server ---------------------------------------------


def test_postgres_restart_under_the_server_no_errors_once_back(
    platform: LocalPlatform, faults: Faults
) -> None:
    experiment = "fault-postgres-restart"
    for _ in range(4):  # every server worker holds pooled connections that the restart cuts
        assert api(platform, "GET", "experiments/search", params={"max_results": 5}).ok
    trainer = faults.trainer("linear_model", "--experiment", experiment,
                             MLSTACK_RETRY_WINDOW_SECONDS="60")  # fmt: skip
    trainer.wait_for_line("[mlstack] fitting")
    faults.stop_postgres()
    assert trainer.process.poll() is None, "the trainer ended before PostgreSQL went down"
    while_down = api(platform, "GET", "experiments/search", params={"max_results": 1}).status_code
    time.sleep(2)
    restart = faults.restore()

    statuses = []
    for index in range(12):
        statuses.append(api(platform, "GET", "experiments/search", params={"max_results": 5}))
        statuses.append(api(platform, "POST", "experiments/create",
                            json={"name": f"fault-pg-after-{time.time_ns()}-{index}"}))  # fmt: skip
    trained = trainer.finish()
    say(f"postgres stopped mid-run (server answered {while_down} meanwhile), back in "
        f"{restart:.1f} s; trainer exited {trained.returncode} after {trained.seconds:.1f} s")  # fmt: skip

    errors = [(r.request.method, r.url, r.status_code, r.text[:200]) for r in statuses if not r.ok]
    assert not errors, f"requests failed once PostgreSQL was back: {errors}"
    assert trained.returncode == 0, finished(trained)
    runs = runs_in(platform, experiment)
    assert [(name, status) for _, name, status in runs] == [("linear_model", "FINISHED")]
    assert_consistent(platform)


# --- the S3 store down during log_model ------------------------------------------------------


def test_s3_down_during_log_model_fails_clearly_and_a_rerun_succeeds(
    platform: LocalPlatform, faults: Faults
) -> None:
    experiment = "fault-s3-down"
    window = {"MLSTACK_RETRY_WINDOW_SECONDS": "6"}
    trainer = faults.trainer("linear_model", "--experiment", experiment, **window)
    trainer.wait_for_line("[mlstack] logging the model")  # plots are stored; the model is next
    faults.kill("s3")
    trained = trainer.finish()
    say(f"S3 killed at log_model; trainer exited {trained.returncode} after "
        f"{trained.seconds:.1f} s")  # fmt: skip

    assert trained.returncode == 1, finished(trained)
    assert "artifact store unavailable" in trained.stderr, finished(trained)
    assert "mlflow-artifacts:/" in trained.stderr and platform.tracking_uri in trained.stderr
    assert "was marked FAILED" in trained.stderr, finished(trained)
    runs = runs_in(platform, experiment)
    assert [(name, status) for _, name, status in runs] == [("linear_model", "FAILED")]
    assert versions_of_runs(platform, [runs[0][0]]) == [], "a version registered without a model"

    restart = faults.restore()
    rerun = faults.trainer("linear_model", "--experiment", experiment, **window).finish()
    say(f"S3 back in {restart:.1f} s; rerun exited {rerun.returncode} in {rerun.seconds:.1f} s")
    assert rerun.returncode == 0, finished(rerun)
    runs = runs_in(platform, experiment)
    assert [status for _, _, status in runs] == ["FAILED", "FINISHED"]
    assert len(versions_of_runs(platform, [runs[1][0]])) == 1
    assert_consistent(platform)


# --- three trainers at once while clients load /invocations ----------------------------------


@dataclass
class InvocationsLoad:
    """Client threads POSTing /invocations until stopped; every answer recorded."""

    url: str
    clients: int = 2
    pause_seconds: float = 0.1  # steady load, not a benchmark: 2 cores also run 3 trainers
    answers: list[int | str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> Callable[[], None]:
        payload = {"dataframe_split": {"columns": DIABETES_COLUMNS, "data": [DIABETES_ROW]}}

        def client() -> None:
            with requests.Session() as session:
                while not self.stop.is_set():
                    try:
                        response = session.post(self.url, json=payload, timeout=30)
                        ok = response.ok and len(response.json()["predictions"]) == 1
                        self.answers.append(
                            200 if ok else f"{response.status_code} {response.text[:120]}"
                        )
                    except (requests.RequestException, ValueError, KeyError) as exc:
                        self.answers.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(self.pause_seconds)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()

        def stop() -> None:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=60)

        return stop


def wait_until_serving(url: str) -> None:
    payload = {"dataframe_split": {"columns": DIABETES_COLUMNS, "data": [DIABETES_ROW]}}
    deadline = time.monotonic() + SERVING_WAIT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        try:
            response = requests.post(url, json=payload, timeout=10)
            if response.ok:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    pytest.fail(f"{url} never answered: {last}")


def test_three_trainers_at_once_under_invocations_load(
    platform: LocalPlatform, faults: Faults
) -> None:
    if not query(platform, "SELECT 1 FROM registered_model_aliases WHERE name = 'linear_model'"):
        first = faults.trainer("linear_model").finish()
        assert first.returncode == 0, finished(first)
    url = f"{platform.serving_url}/invocations"
    wait_until_serving(url)

    experiment = "fault-concurrent"  # one new experiment: the three race to create it
    load = InvocationsLoad(url)
    stop_load = load.run()
    try:
        trainers = [faults.trainer(model, "--experiment", experiment)
                    for model in ("linear_model", "logistic_model", "random_forest_model")]  # fmt: skip
        results = [trainer.finish() for trainer in trainers]
    finally:
        stop_load()
    say(f"three trainers took {', '.join(f'{r.seconds:.1f}' for r in results)} s; "
        f"{len(load.answers)} /invocations answers meanwhile")  # fmt: skip

    for trained in results:
        assert trained.returncode == 0, finished(trained)
    runs = runs_in(platform, experiment)
    assert_one_run_per_name(runs, {"linear_model", "logistic_model", "random_forest_model"})
    assert {status for _, _, status in runs} == {"FINISHED"}, runs
    assert len(versions_of_runs(platform, [run_id for run_id, _, _ in runs])) == 3
    errors = [answer for answer in load.answers if answer != 200]
    assert load.answers and not errors, f"{len(errors)} of {len(load.answers)} failed: {errors[:5]}"
    assert_consistent(platform)
