"""The tracking server's own run writes (mlstack/run_writes.py) against MLflow's store.

The oracle is MLflow 3.17's own Flask app and store, in this process, on the platform's database.
Runs are created and updated through both, and compared: answers (status and JSON, errors
included) and rows. Two runs of one experiment get the same batches, one through the oracle, one
through the platform over HTTP. After every batch both answers must be the same (status and JSON, errors included), and
the rows both runs hold, read with psycopg2, must be the same: params, metrics, latest metrics, tags
and the run's own row. The batches hold what trainers send and its edges: NaN and infinities, a
metric twice in a batch, re-logged metrics and params, older steps, ties on step and timestamp,
overwritten tags, a tag twice in a batch, truncated values, conflicts, bad input and deleted runs.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import LocalPlatform

pytestmark = pytest.mark.integration

ENDPOINT = "/api/2.0/mlflow/runs/log-batch"
CREATE = "/api/2.0/mlflow/runs/create"
UPDATE = "/api/2.0/mlflow/runs/update"
RUN_ROW = ("SELECT name, source_type, source_name, entry_point_name, user_id, status, start_time,"
           " end_time, deleted_time, source_version, lifecycle_stage, artifact_uri, experiment_id"
           " FROM runs WHERE run_uuid = %s")  # fmt: skip
HEADER = "X-MLstack-Write"
TABLES = {
    "params": "SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key",
    "metrics": "SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = %s"
    " ORDER BY key, step, timestamp, value, is_nan",
    "latest_metrics": "SELECT key, value, timestamp, step, is_nan FROM latest_metrics"
    " WHERE run_uuid = %s ORDER BY key",
    "tags": "SELECT key, value FROM tags WHERE run_uuid = %s AND key <> 'mlflow.runName'"
    " ORDER BY key",
    "runs": "SELECT name, status, lifecycle_stage, end_time FROM runs WHERE run_uuid = %s",
    "run_name_tag": "SELECT value FROM tags WHERE run_uuid = %s AND key = 'mlflow.runName'",
}


def rows(conn: Any, run_id: str) -> dict[str, list[tuple[Any, ...]]]:
    with conn.cursor() as cursor:
        found = {}
        for table, sql in TABLES.items():
            cursor.execute(sql, (run_id,))
            found[table] = cursor.fetchall()
        return found


def metric(key: str, value: float | str, step: int, timestamp: int = 1_700_000_000_000) -> Any:
    return {"key": key, "value": value, "timestamp": timestamp, "step": step}


def batches() -> list[tuple[str, dict[str, Any]]]:
    """(who answers: sql, mlflow for what is left to MLflow's store, or error for what MLflow's
    validation refuses; the body without its run_id)."""
    params = [{"key": f"param_{i}", "value": str(i * 0.5)} for i in range(20)]
    tags = [{"key": f"mlstack.tag_{i}", "value": f"value-{i}"} for i in range(5)]
    return [
        ("sql", {"params": params, "tags": tags}),  # a trainer's first batch
        ("sql", {"metrics": [metric(f"metric_{i}", i / 7, 0) for i in range(10)], "tags": tags}),
        (
            "sql",
            {
                "metrics": [
                    metric("odd", "NaN", 1),
                    metric("odd", "NaN", 1),
                    metric("inf", "Infinity", 1),
                    metric("ninf", "-Infinity", 1),
                    metric("zero", -0.0, 1),
                    metric("zero", 0.0, 1),
                    metric("loss", 0.5, 5),
                    metric("loss", 0.7, 3),
                    metric("loss", 0.4, 5, 1),
                    metric("loss", 0.4, 5, 1),
                    metric("tie", 0.0, 2),
                    metric("tie", "NaN", 2),
                    metric("later", 0.1, 2),
                    metric("later", 0.05, 2),
                    metric("tied", 0.0, 2),
                    metric("metric_0", 9.0, 0, 0),
                ]
            },
        ),
        # The same metrics again (all already stored), one new older step, one newer, and a tie
        # with a stored latest value (only a strictly newer point replaces it).
        (
            "sql",
            {
                "metrics": [
                    metric("loss", 0.5, 5),
                    metric("loss", 0.7, 3),
                    metric("loss", 0.9, 1),
                    metric("odd", 1.0, 2),
                    metric("tied", "NaN", 2),
                ]
            },
        ),
        (
            "sql",
            {
                "params": [*params[:3], {"key": "late", "value": "x" * 6500}],
                "tags": [
                    {"key": "mlstack.tag_0", "value": "new"},
                    {"key": "dup", "value": "a"},
                    {"key": "dup", "value": "b"},
                    {"key": "long", "value": "y" * 9000},
                ],
            },
        ),
        (
            "sql",
            {
                "metrics": [
                    metric("history", 1 / (1 + s), s, 1_700_000_000_000 + s) for s in range(1000)
                ]
            },
        ),  # a long history's chunk
        ("sql", {}),
        (
            "sql",
            {
                "metrics": [metric("é ü/path-key:1", 1.5, 0)],
                "tags": [{"key": "mlflow.note.content", "value": 'a\nb "q" \\'}],
            },
        ),
        # A param that changes value: MLflow's error, and nothing of the batch is stored.
        (
            "conflict",
            {
                "params": [{"key": "param_1", "value": "changed"}],
                "metrics": [metric("never", 1.0, 0)],
                "tags": [{"key": "never", "value": "x"}],
            },
        ),
        (
            "mlflow",
            {
                "tags": [
                    {"key": "mlflow.runName", "value": "renamed"},
                    {"key": "with-name", "value": "1"},
                ]
            },
        ),
        ("error", {"metrics": [metric("bad key?", 1.0, 0)]}),
        ("error", {"metrics": [{"key": "no-value", "timestamp": 1, "step": 0}]}),
        ("error", {"params": [{"key": "twice", "value": "1"}, {"key": "twice", "value": "1"}]}),
        ("error", {"params": [{"key": f"p{i}", "value": "1"} for i in range(101)]}),
        ("error", {"tags": [{"key": "k" * 251, "value": "1"}]}),
        ("error", {"metrics": [metric("negative-time", 1.0, 0, -5)]}),
    ]


def test_every_batch_stores_mlflows_rows(local_platform: LocalPlatform, mlflow_oracle: Any,
                                         pg_conn: Any) -> None:  # fmt: skip
    import requests
    from mlflow import MlflowClient

    client = MlflowClient(local_platform.tracking_uri)
    experiment = client.create_experiment(f"log-batch-{time.time_ns()}")
    created = mlflow_oracle.post(CREATE, json={"experiment_id": experiment, "run_name": "r"})
    theirs_id = created.json["run"]["info"]["run_id"]
    ours_id = client.create_run(experiment, run_name="r").info.run_id
    url = local_platform.tracking_uri + ENDPOINT
    written_here = []
    for writer, body in batches():
        ours = requests.post(url, json={**body, "run_id": ours_id}, timeout=60)
        theirs = mlflow_oracle.post(ENDPOINT, json={**body, "run_id": theirs_id})
        assert ours.status_code == theirs.status_code, (body, ours.text, theirs.data)
        assert ours.status_code == (400 if writer in ("error", "conflict") else 200), ours.text
        mine = ours.text.replace(ours_id, "RUN")
        assert json.loads(mine) == json.loads(theirs.data.decode().replace(theirs_id, "RUN"))
        written_here.append(ours.headers.get(HEADER) == "sql")
        assert written_here[-1] == (writer == "sql"), (writer, body)
        assert rows(pg_conn, ours_id) == rows(pg_conn, theirs_id), body
    found = rows(pg_conn, ours_id)
    assert len(found["metrics"]) > 1000 and ("late", "x" * 6000) in found["params"]
    assert ("dup", "b") in found["tags"] and ("mlstack.tag_0", "new") in found["tags"]
    assert found["runs"][0][0] == "renamed" and not any(k == "never" for k, *_ in found["tags"])
    assert ("loss", 0.5, 1_700_000_000_000, 5, False) in found["latest_metrics"]
    assert ("tie", 0.0, 1_700_000_000_000, 2, False) in found[
        "latest_metrics"
    ]  # the first of a tie
    assert ("tied", 0.0, 1_700_000_000_000, 2, False) in found["latest_metrics"]

    # A deleted run, a run that does not exist, a malformed id: MLflow's errors, in its words.
    client.delete_run(ours_id)
    client.delete_run(theirs_id)
    for run_ids in ((ours_id, theirs_id), ("f" * 32, "f" * 32), ("no-such-id", "no-such-id")):
        body = {"metrics": [metric("after", 1.0, 0)]}
        ours = requests.post(url, json={**body, "run_id": run_ids[0]}, timeout=60)
        theirs = mlflow_oracle.post(ENDPOINT, json={**body, "run_id": run_ids[1]})
        assert ours.status_code == theirs.status_code >= 400, ours.text
        assert ours.json()["message"].replace(ours_id, "RUN") == json.loads(
            theirs.data)["message"].replace(theirs_id, "RUN")  # fmt: skip
        assert HEADER not in ours.headers
    assert rows(pg_conn, ours_id) == rows(pg_conn, theirs_id)


def test_concurrent_batches_keep_every_point_and_the_newest(local_platform: LocalPlatform,
                                                            pg_conn: Any) -> None:  # fmt: skip
    """Four clients log into one run at once, over the same keys, tags and a new param: every call
    succeeds, written by mlstack (a batch that meets a concurrent one retries; MLflow's store is
    not safe for this), every distinct point is stored once, and each latest value is the newest
    point logged."""
    import requests
    from mlflow import MlflowClient

    client = MlflowClient(local_platform.tracking_uri)
    experiment = client.create_experiment(f"log-batch-concurrent-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id
    url = local_platform.tracking_uri + ENDPOINT
    sent: list[tuple[str, float, int, int]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        rnd = random.Random(seed)
        session = requests.Session()
        for call in range(15):
            points = [(f"m{rnd.randrange(4)}", rnd.choice((0.25, 0.5, 0.75)), 1_000 + call,
                       rnd.randrange(20)) for _ in range(30)]  # fmt: skip
            body = {"run_id": run_id,
                    "metrics": [metric(k, v, s, t) for k, v, t, s in points],
                    "params": [{"key": "shared", "value": "same"}],
                    "tags": [{"key": f"t{rnd.randrange(3)}", "value": str(seed)}]}  # fmt: skip
            answer = session.post(url, json=body, timeout=60)
            with lock:
                if answer.status_code != 200 or answer.headers.get(HEADER) != "sql":
                    failures.append(
                        f"{answer.status_code} {answer.headers.get(HEADER)} {answer.text}"
                    )
                sent.extend(points)

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    found = rows(pg_conn, run_id)
    stored = {(k, v, t, s) for k, v, t, s, _ in found["metrics"]}
    assert stored == set(sent)
    newest = {}
    for key, value, timestamp, step in sent:
        if key not in newest or (step, timestamp, value) > newest[key][:3]:
            newest[key] = (step, timestamp, value)
    assert {k: (s, t, v) for k, v, t, s, _ in found["latest_metrics"]} == newest
    assert found["params"] == [("shared", "same")]
    assert {key for key, _ in found["tags"]} <= {"t0", "t1", "t2"}


def masked(document: Any, run_id: str, name: str | None = None) -> Any:
    """`document` (JSON text or a row) with its run id, and a generated run name, replaced."""
    text = json.dumps(document) if not isinstance(document, str) else document
    text = text.replace(run_id, "RUN")
    return json.loads(text.replace(name, "NAME") if name else text)


def test_runs_are_created_and_updated_as_mlflow_does(local_platform: LocalPlatform,
                                                     mlflow_oracle: Any,
                                                     pg_conn: Any) -> None:  # fmt: skip
    import requests
    from mlflow import MlflowClient

    client = MlflowClient(local_platform.tracking_uri)
    experiment = client.create_experiment(f"run-writes-{time.time_ns()}")
    gone = client.create_experiment(f"run-writes-deleted-{time.time_ns()}")
    client.delete_experiment(gone)
    base = local_platform.tracking_uri

    def both(path: str, ours_body: dict[str, Any], theirs_body: dict[str, Any]) -> Any:
        ours = requests.post(base + path, json=ours_body, timeout=60)
        theirs = mlflow_oracle.post(path, json=theirs_body)
        assert ours.status_code == theirs.status_code, (ours_body, ours.text, theirs.data)
        return ours, theirs

    def run_row(run_id: str, name: str | None) -> Any:
        with pg_conn.cursor() as cursor:
            cursor.execute(RUN_ROW, (run_id,))
            found = cursor.fetchall()
        return masked(found, run_id, name), rows(pg_conn, run_id)["tags"]

    creates = [
        ("sql", {"experiment_id": experiment, "start_time": 123, "run_name": "named",
                 "tags": [{"key": "mlflow.user", "value": "u"}, {"key": "t", "value": "v"}]}),
        ("sql", {"experiment_id": experiment, "start_time": 5, "user_id": "someone"}),
        ("sql", {"experiment_id": experiment,
                 "tags": [{"key": "mlflow.runName", "value": "from-tag"}]}),
        ("sql", {"experiment_id": "0", "run_name": "in-default"}),
        ("sql", {"experiment_id": experiment, "run_name": "same",
                 "tags": [{"key": "mlflow.runName", "value": "same"}]}),
        ("error", {"experiment_id": experiment, "run_name": "a",
                   "tags": [{"key": "mlflow.runName", "value": "b"}]}),
        ("error", {"experiment_id": "999999"}),
        ("error", {"experiment_id": gone}),
        ("error", {"experiment_id": "x1"}),
    ]  # fmt: skip
    pairs = []
    for writer, body in creates:
        ours, theirs = both(CREATE, body, body)
        assert (ours.headers.get(HEADER) == "sql") == (writer == "sql"), (writer, body)
        if writer == "error":
            assert ours.status_code >= 400
            assert ours.json()["error_code"] == theirs.json["error_code"], body
            assert ours.json()["message"] == theirs.json["message"], body
            continue
        assert ours.status_code == 200, ours.text
        mine, their = ours.json()["run"], theirs.json["run"]
        ids = (mine["info"]["run_id"], their["info"]["run_id"])
        names = (None, None) if "run_name" in body or body.get("tags") else (
            mine["info"]["run_name"], their["info"]["run_name"])  # fmt: skip
        assert masked(mine, ids[0], names[0]) == masked(their, ids[1], names[1]), body
        assert run_row(ids[0], names[0]) == run_row(ids[1], names[1]), body
        pairs.append(ids)

    ours_id, theirs_id = pairs[0]
    updates = [
        ("sql", {"status": "FINISHED", "end_time": 99}),
        ("sql", {"end_time": 100}),
        ("sql", {}),
        ("sql", {"status": "FAILED"}),
        ("mlflow", {"run_name": "renamed", "status": "KILLED"}),
        ("sql", {"status": "NOT_A_STATUS"}),  # MLflow's parser drops an unknown status
        ("error", {"end_time": "soon"}),
    ]
    for writer, body in updates:
        ours, theirs = both(UPDATE, {**body, "run_id": ours_id}, {**body, "run_id": theirs_id})
        assert (ours.headers.get(HEADER) == "sql") == (writer == "sql"), (writer, body)
        assert ours.status_code == (400 if writer == "error" else 200), ours.text
        assert masked(ours.json(), ours_id) == masked(theirs.json, theirs_id), body
        assert run_row(ours_id, None) == run_row(theirs_id, None), body
    # A deleted run and one that does not exist: MLflow's errors, and the deleted run unchanged.
    for run_id in pairs[1]:
        client.delete_run(run_id)
    for gone_ids in (pairs[1], ("f" * 32, "f" * 32)):
        ours, theirs = both(UPDATE, {"run_id": gone_ids[0], "status": "FINISHED"},
                            {"run_id": gone_ids[1], "status": "FINISHED"})  # fmt: skip
        assert ours.status_code >= 400 and HEADER not in ours.headers
        assert masked(ours.json(), gone_ids[0]) == masked(theirs.json, gone_ids[1])
    with pg_conn.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_uuid = ANY(%s)", (list(pairs[1]),))
        assert cursor.fetchall() == [("RUNNING",), ("RUNNING",)]


def test_every_request_shape_is_answered_as_mlflow_answers_it(local_platform: LocalPlatform,
                                                              mlflow_oracle: Any,
                                                              pg_conn: Any) -> None:  # fmt: skip
    """Bodies as clients may send them, raw: the plain shape is read by mlstack, the rest (numbers
    in strings, bare NaN, booleans, nulls, extra or missing fields, another content type) by
    MLflow's handler; the answers and rows must be MLflow's either way."""
    import requests
    from mlflow import MlflowClient

    client = MlflowClient(local_platform.tracking_uri)
    experiment = client.create_experiment(f"run-writes-shapes-{time.time_ns()}")
    created = mlflow_oracle.post(CREATE, json={"experiment_id": experiment, "run_name": "s"})
    theirs_id = created.json["run"]["info"]["run_id"]
    ours_id = client.create_run(experiment, run_name="s").info.run_id

    def m(n: int, value: str, timestamp: str = "5", step: str = "0") -> str:
        return f'{{"key": "k{n}", "value": {value}, "timestamp": {timestamp}, "step": {step}}}'

    def batch(*metrics: str) -> str:
        return '{"run_id": "RUN", "metrics": [' + ", ".join(metrics) + "]}"

    shapes = [
        ("sql", batch(m(1, "1"), m(2, '"NaN"', step="-1"))),
        ("sql", '{"run_id": "RUN", "metrics": [{"key": "k3", "value": 2.5, "timestamp": 7}]}'),
        ("sql", '{"run_id": "RUN", "params": [{"key": "p", "value": ""}], "tags": []}'),
        ("mlflow", batch(m(4, '"1.5"', '"9"', '"2"'))),  # numbers in strings
        ("mlflow", batch(m(5, "NaN"))),  # a bare NaN
        ("mlflow", batch(m(6, "true"))),
        ("mlflow", batch(m(7, "null"))),
        ("mlflow", '{"run_id": "RUN", "metrics": null}'),
        ("mlflow", '{"run_id": "RUN", "params": [{"key": "p2"}]}'),
        ("mlflow", '{"run_id": "RUN", "tags": [{"key": "t", "value": "v", "extra": 1}]}'),
        ("mlflow", '{"run_uuid": "RUN", "params": [{"key": "p3", "value": "v"}]}'),
        ("mlflow", '"{\\"run_id\\": \\"RUN\\", \\"params\\": []}"'),  # double-encoded
        ("mlflow", "not json"),
    ]  # fmt: skip
    url = local_platform.tracking_uri + ENDPOINT
    headers = {"Content-Type": "application/json"}
    for writer, raw in shapes:
        ours = requests.post(url, data=raw.replace("RUN", ours_id), headers=headers, timeout=60)
        theirs = mlflow_oracle.post(ENDPOINT, data=raw.replace("RUN", theirs_id), headers=headers)
        assert ours.status_code == theirs.status_code, (raw, ours.text, theirs.data)
        # The text itself: MLflow's own 500 page for a null list included (its handler's bug).
        assert ours.text.replace(ours_id, "RUN") == theirs.data.decode().replace(theirs_id, "RUN")
        if writer == "sql":
            assert ours.headers.get(HEADER) == "sql", raw
        assert rows(pg_conn, ours_id) == rows(pg_conn, theirs_id), raw
    ours = requests.post(url, data='{"run_id": "x"}', headers={"Content-Type": "text/plain"},
                         timeout=60)  # fmt: skip
    theirs = mlflow_oracle.post(
        ENDPOINT, data='{"run_id": "x"}', headers={"Content-Type": "text/plain"}
    )
    assert ours.status_code == theirs.status_code >= 400 and ours.json() == theirs.json
