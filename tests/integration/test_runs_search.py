"""The tracking server's own runs/search (mlstack/runs_search.py) against MLflow's handler.

The oracle is MLflow 3.17's own Flask app, in this process, on the platform's database: for every
request below, the platform's answer over HTTP must be the same JSON document as MLflow's handler
gives for the same database (lists of metrics, params and tags compared by key: both read them in
the database's order). The experiment holds what the runs table meets in practice and its edges:
NaN and infinite metrics, runs without a metric, ties on the ordered metric and on start time,
running, failed and deleted runs, a dataset input, a logged model output, non-ASCII names and
tags with quotes and newlines. Each request is followed page by page through its tokens.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import LocalPlatform

pytestmark = pytest.mark.integration

ENDPOINT = "/ajax-api/2.0/mlflow/runs/search"


def seed(tracking_uri: str) -> tuple[str, str]:
    """Two experiments of varied runs; their ids."""
    from mlflow import MlflowClient
    from mlflow.entities import (
        Dataset,
        DatasetInput,
        InputTag,
        LoggedModelOutput,
        Metric,
        Param,
    )

    client = MlflowClient(tracking_uri)
    stamp = time.time_ns()
    first = client.create_experiment(f"runs-search-{stamp}")
    second = client.create_experiment(f"runs-search-other-{stamp}")

    def run(experiment: str, name: str | None, metrics: dict[str, float], *,
            params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
            status: str = "FINISHED", start: int | None = None, step: int = 0) -> str:  # fmt: skip
        created = client.create_run(experiment, run_name=name, start_time=start, tags=tags)
        run_id = created.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in (params or {}).items()])  # fmt: skip
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    run(first, "plain", {"m0": 0.7, "m1": 0.3}, params={"p": "1"}, tags={"t": "x"}, step=2)
    run(first, "nan", {"m0": math.nan, "m1": math.nan})
    run(first, "infinite", {"m0": math.inf, "m1": -math.inf})
    run(first, "no-metrics", {}, params={"p": "2"})
    run(first, "running", {"m0": 0.9}, status="RUNNING", step=5)
    run(first, "failed", {"m1": 0.3}, status="FAILED")
    run(first, "tie-a", {"m0": 0.6, "m1": 0.5}, start=1_000)
    run(first, "tie-b", {"m0": 0.6, "m1": 0.5}, start=1_000)
    run(first, None, {"m1": 1e-300})
    client.delete_run(run(first, "deleted", {"m0": 0.8}))
    with_input = run(first, "dataset", {"m0": 0.55})
    dataset = Dataset("iris", "abc123", "local", "/data/iris.csv", '{"a": 1}', '{"rows": 2}')
    client.log_inputs(with_input, datasets=[
        DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])  # fmt: skip
    with_output = run(first, "model-out", {"m0": 0.51}, step=3)
    model = client.create_logged_model(first, name="model", source_run_id=with_output)
    client.log_outputs(with_output, [LoggedModelOutput(model.model_id, 3)])
    run(first, "unicode é ✓", {"m0": 0.52}, params={"p_u": "ü" * 10},
        tags={"mlflow.note.content": 'line1\nline2 "q" \\'})  # fmt: skip
    for number in range(5):
        run(second, f"other-{number}", {"m0": number / 10})
    return first, second


@pytest.fixture(scope="module")
def experiments(local_platform: LocalPlatform) -> tuple[str, str]:
    return seed(local_platform.tracking_uri)


def by_key(document: dict[str, Any]) -> dict[str, Any]:
    for run in document.get("runs", []):
        for items in run.get("data", {}).values():
            items.sort(key=lambda item: item["key"])
    return document


def requests_for(first: str, second: str) -> list[dict[str, Any]]:
    ui = {"experiment_ids": [first], "max_results": 100, "run_view_type": "ACTIVE_ONLY"}
    bodies: list[dict[str, Any]] = [
        {**ui, "order_by": ["attributes.start_time DESC"]},  # the UI's runs table
        {**ui, "filter": "metrics.m0 > 0.5", "order_by": ["metrics.`m1` DESC"]},
        {"experiment_ids": [first], "order_by": ["metrics.m0 ASC"]},
        {"experiment_ids": [first], "order_by": ["metrics.m1 DESC", "attributes.start_time ASC"]},
        {"experiment_ids": [first], "order_by": ["attributes.start_time ASC", "metrics.m1 DESC"]},
        {"experiment_ids": [first], "order_by": ["created DESC"]},
        {"experiment_ids": [first], "filter": "metrics.m0 != 0.6"},
        {"experiment_ids": [first], "filter": "metrics.m0 >= 0.55 and metrics.m1 < 1"},
        {"experiment_ids": [first], "filter": "metrics.m1 = 0.3", "run_view_type": "ALL"},
        {"experiment_ids": [first], "run_view_type": "DELETED_ONLY"},
        {"experiment_ids": [first, second], "order_by": ["metrics.m0 DESC"]},
        {"experiment_ids": ["999999"]},
    ]
    for size in (1, 2, 5):
        for order in (["metrics.m0 DESC"], ["metrics.m1"], ["attributes.start_time DESC"], []):
            bodies.append({"experiment_ids": [first, second], "max_results": size,
                           "order_by": order, "run_view_type": "ALL"})  # fmt: skip
    return bodies


def test_every_answer_is_mlflows_document(local_platform: LocalPlatform,
                                          experiments: tuple[str, str],
                                          mlflow_oracle: Any) -> None:  # fmt: skip
    import requests

    pages = 0
    for body in requests_for(*experiments):
        token = None
        while True:
            request = {**body, **({"page_token": token} if token else {})}
            ours = requests.post(local_platform.tracking_uri + ENDPOINT, json=request, timeout=60)
            theirs = mlflow_oracle.post(ENDPOINT, json=request)
            assert (ours.status_code, theirs.status_code) == (200, 200), (request, ours.text)
            # Compact JSON: the answer came from our route, not from MLflow's handler.
            assert b"\n" not in ours.content, request
            assert by_key(ours.json()) == by_key(json.loads(theirs.data)), request
            pages += 1
            token = ours.json().get("next_page_token")
            if not token:
                break
    assert pages > 40  # the small pages were followed to the end


def test_what_it_does_not_take_is_mlflows_answer(local_platform: LocalPlatform,
                                                 experiments: tuple[str, str],
                                                 mlflow_oracle: Any) -> None:  # fmt: skip
    import requests

    first, _ = experiments
    for request in (
        {"experiment_ids": [first], "filter": "params.p = '1'"},
        {"experiment_ids": [first], "order_by": ["params.p DESC"]},
        {"experiment_ids": [first], "filter": "tags.t IS NULL"},
        {"experiment_ids": [first], "filter": "attributes.status = 'FINISHED'"},
    ):
        ours = requests.post(local_platform.tracking_uri + ENDPOINT, json=request, timeout=60)
        theirs = mlflow_oracle.post(ENDPOINT, json=request)
        assert ours.status_code == theirs.status_code == 200, ours.text
        assert b"\n" in ours.content, request  # pretty-printed: MLflow's handler wrote it
        assert by_key(ours.json()) == by_key(json.loads(theirs.data)), request
    for request in (
        {"experiment_ids": [first], "filter": "metrics.m0 >"},
        {"experiment_ids": [first], "max_results": 50_001},
        {"experiment_ids": [first], "page_token": "not-a-token"},
        {"experiment_ids": [first], "order_by": ["metrics.m0", "metrics.m0"]},
        {"experiment_ids": ["x1"]},
    ):
        ours = requests.post(local_platform.tracking_uri + ENDPOINT, json=request, timeout=60)
        theirs = mlflow_oracle.post(ENDPOINT, json=request)
        assert ours.status_code == theirs.status_code >= 400, (request, ours.text)
        assert ours.json()["error_code"] == json.loads(theirs.data)["error_code"], request


def test_its_page_queries_use_the_extra_indexes(local_platform: LocalPlatform,
                                                experiments: tuple[str, str]) -> None:  # fmt: skip
    """The runs table reads mlstack_runs_experiment_start_time in order; a page ordered by a
    metric reads mlstack_latest_metrics_key_value. Sequential scans, bitmap scans and sorts are
    priced out, so the choice does not depend on how few rows the session platform holds (with a
    few hundred, a bitmap scan of MLflow's key index and a sort can cost less): what is checked is
    that the page's SQL can be read in the index's order, as it is at 10^5 runs."""
    import psycopg2

    from mlstack.runs_search import page_sql, parse

    first, _ = experiments
    cases = (
        (["attributes.start_time DESC"], None, "mlstack_runs_experiment_start_time"),
        (["metrics.`m1` DESC"], 0, "mlstack_latest_metrics_key_value"),
    )
    conn = psycopg2.connect(local_platform.pg_uri)
    try:
        with conn.cursor() as cursor:
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                cursor.execute(f"SET {setting} = off")
            for order_by, group, index in cases:
                query = parse([first], "", 1, 100, order_by, None)
                assert query is not None
                sql, args = page_sql(query, group, 101)
                cursor.execute("EXPLAIN " + sql, args)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert index in plan, plan
    finally:
        conn.close()
