"""`POST runs/search` answered from SQL: the tracking server's runs table, ahead of MLflow's handler.

MLflow 3.17's handler loads each run of a page as ORM objects (the run, its tags, params and latest
metrics), turns them into entities, then protobuf, then pretty-printed JSON through the
pure-Python encoder: about 0.5 s for the UI's page of 100 runs with 35 values each, whatever the
database costs (bench/README.md). And for a page ordered by a metric it asks PostgreSQL to sort
every run of the experiment before its LIMIT. This answers the same request with:

1. the page's run ids from one narrow query (no ORM), ordered exactly as MLflow orders them:
   each `order_by` clause sorts by "is it there" first (a metric: real value, then NaN, then
   missing), then by the value; then `start_time DESC` unless ordered already; then `run_uuid`.
   When the first clause is a metric, its three groups are read one after another, each in index
   order (`mlstack_latest_metrics_key_value`, mlstack/platform/schema.py), until the page is full:
   a top-N over the metric instead of a sort of the whole experiment;
2. the page's runs, tags, params and latest metrics in four queries, and its dataset inputs and
   model outputs through MLflow's own store methods (the ones its `search_runs` calls);
3. compact JSON with orjson: the same document MLflow writes (field for field, int64s as numbers,
   NaN and infinities as protobuf's "NaN"/"Infinity" strings), without the indentation.

Only what it can answer exactly is answered here; everything else goes to MLflow's handler
unchanged (`None` from `answer`): a filter on anything but metrics (params, tags, attributes,
datasets, IS NULL), an order on anything but metrics and start time, a store that is not MLflow's
plain SQLAlchemy store on PostgreSQL (workspaces, other databases), odd experiment ids, a bad
page token or max_results (MLflow's handler then gives its own error). Filters and orders are
parsed by MLflow's own `SearchUtils`, so the two never disagree on what a request means. The
request is validated by MLflow's `_get_request_message` with the schema MLflow's handler uses, and
basic auth's experiment filter is applied exactly as MLflow applies it.

tests/integration/test_runs_search.py holds every answer equal to MLflow's handler's on the same
database, for runs with NaN, infinities, ties, missing metrics, deleted runs, inputs and outputs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# What this module takes: experiment ids that fit MLflow's INTEGER column, and the comparators of
# a metric filter (SearchUtils.VALID_METRIC_COMPARATORS), written in SQL as they are.
_EXPERIMENT_ID = re.compile(r"[0-9]{1,9}")
_COMPARATORS = frozenset((">", ">=", "<", "<=", "=", "!="))


@dataclass(frozen=True)
class MetricFilter:
    key: str
    comparator: str  # one of _COMPARATORS, SQL as it is
    value: float


@dataclass(frozen=True)
class Order:
    kind: str  # "metric" or "start_time"
    key: str
    ascending: bool


@dataclass
class Query:
    experiment_ids: list[int]
    stages: tuple[str, ...]
    filters: list[MetricFilter] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    max_results: int = 1000
    offset: int = 0


def parse(
    experiment_ids: Sequence[str],
    filter_string: str,
    view_type: int,
    max_results: int,
    order_by: Sequence[str],
    page_token: str | None,
) -> Query | None:
    """A Query this module answers exactly as MLflow would, or None (MLflow's handler answers).
    `view_type`: mlflow.entities.ViewType's value, as MLflow's handler reads it."""
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
    from mlflow.utils.search_utils import SearchUtils

    if not experiment_ids or not all(_EXPERIMENT_ID.fullmatch(e) for e in experiment_ids):
        return None
    stages = tuple(LifecycleStage.view_type_to_stages(view_type))  # what MLflow's store reads
    if not stages or not 1 <= max_results <= SEARCH_MAX_RESULTS_THRESHOLD:
        return None
    try:
        parsed = SearchUtils.parse_search_filter(filter_string)
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        clauses = [SearchUtils.parse_order_by_for_search_runs(c) for c in order_by]
    except Exception:  # MLflow's handler says what is wrong, in its words
        return None
    if not isinstance(offset, int) or offset < 0:  # a forged token: PostgreSQL refuses it there
        return None
    filters = []
    for item in parsed:
        comparator = str(item.get("comparator", "")).upper()
        if item.get("type") != "metric" or comparator not in _COMPARATORS:
            return None
        try:
            value = float(item["value"])
        except (TypeError, ValueError):
            return None
        key = SearchUtils.translate_key_alias(item["key"])  # as MLflow's store does, any type
        filters.append(MetricFilter(key, comparator, value))
    orders: list[Order] = []
    seen: set[tuple[str, str]] = set()
    for key_type, key, ascending in clauses:
        key = SearchUtils.translate_key_alias(key)
        if key_type == "metric":
            order = Order("metric", key, bool(ascending))
        elif key_type == "attribute" and key == "start_time":
            order = Order("start_time", key, bool(ascending))
        else:
            return None
        if (order.kind, key) in seen:  # MLflow refuses duplicate fields
            return None
        seen.add((order.kind, key))
        orders.append(order)
    return Query(
        experiment_ids=sorted({int(e) for e in experiment_ids}),
        stages=stages,
        filters=filters,
        orders=orders,
        max_results=max_results,
        offset=offset,
    )


# --- the page's run ids -----------------------------------------------------------------------


def page_sql(query: Query, first_group: int | None, limit: int) -> tuple[str, list[Any]]:
    """SELECT run_uuid in MLflow's order, and its arguments; with `first_group`, only the runs in
    that group of the first (metric) order clause: 0 its value is a number, 1 it is NaN, 2 the run
    lacks it."""
    joins: list[str] = []
    join_args: list[Any] = []
    # One experiment as `=`: the runs-table index (mlstack_runs_experiment_start_time) matches.
    single = len(query.experiment_ids) == 1
    where = ["r.experiment_id = %s" if single else "r.experiment_id = ANY(%s)",
             "r.lifecycle_stage = ANY(%s)"]  # fmt: skip
    where_args: list[Any] = [
        query.experiment_ids[0] if single else query.experiment_ids,
        list(query.stages),
    ]
    order: list[str] = []
    for number, item in enumerate(query.filters):
        alias = f"f{number}"
        # MLflow stores NaN as 0 with is_nan: it never satisfies a comparison but "!=".
        nan = f"OR {alias}.is_nan" if item.comparator == "!=" else f"AND NOT {alias}.is_nan"
        joins.append(
            f"JOIN latest_metrics {alias} ON {alias}.run_uuid = r.run_uuid AND {alias}.key = %s"
            f" AND ({alias}.value {item.comparator} %s {nan})"
        )
        join_args += [item.key, item.value]
    for number, item in enumerate(query.orders):
        direction = "" if item.ascending else " DESC"
        if item.kind == "start_time":
            order += [
                "CASE WHEN r.start_time IS NULL THEN 1 ELSE 0 END",
                f"r.start_time{direction}",
            ]
            continue
        alias = f"o{number}"
        if number == 0 and first_group == 2:
            where.append(
                "NOT EXISTS (SELECT 1 FROM latest_metrics x"
                " WHERE x.run_uuid = r.run_uuid AND x.key = %s)"
            )
            where_args.append(item.key)
        elif number == 0 and first_group is not None:
            joins.append(
                f"JOIN latest_metrics {alias} ON {alias}.run_uuid = r.run_uuid"
                f" AND {alias}.key = %s AND {alias}.is_nan = %s"
            )
            join_args += [item.key, first_group == 1]
            order.append(f"{alias}.value{direction}")
        else:
            joins.append(
                f"LEFT JOIN latest_metrics {alias}"
                f" ON {alias}.run_uuid = r.run_uuid AND {alias}.key = %s"
            )
            join_args.append(item.key)
            order += [
                f"CASE WHEN {alias}.is_nan = true THEN 1 WHEN {alias}.value IS NULL THEN 2 ELSE 0 END",
                f"{alias}.value{direction}",
            ]
    if not any(o.kind == "start_time" for o in query.orders):
        order.append("r.start_time DESC")
    order.append("r.run_uuid")
    sql = " ".join(
        ["SELECT r.run_uuid FROM runs r", *joins, "WHERE", " AND ".join(where),
         "ORDER BY", ", ".join(order), "LIMIT %s"]
    )  # fmt: skip
    return sql, [*join_args, *where_args, limit]


def page_run_ids(cursor: Any, query: Query) -> list[str]:
    """Up to max_results + 1 run ids from `offset` on, in MLflow's order (the extra one says
    whether there is a next page)."""
    need = query.offset + query.max_results + 1
    groups: list[int | None] = [None]
    if query.orders and query.orders[0].kind == "metric":
        groups = [0, 1, 2]
    found: list[str] = []
    for group in groups:
        cursor.execute(*page_sql(query, group, need - len(found)))
        found += [row[0] for row in cursor.fetchall()]
        if len(found) >= need:
            break
    return found[query.offset : need]


# --- the page's runs, as MLflow's JSON ----------------------------------------------------------


def _number(value: float) -> float | str:
    """A double as protobuf's JSON writes it: NaN and infinities as strings."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _message(proto: Any) -> dict[str, Any]:
    """A protobuf message as MLflow's handlers write it (int64s as numbers)."""
    import json

    from mlflow.utils.proto_json_utils import message_to_json

    return json.loads(message_to_json(proto))


def fetch_runs(cursor: Any, store: Any, run_ids: list[str]) -> list[dict[str, Any]] | None:
    """The runs `run_ids`, in that order, as MLflow's `Run.to_proto()` writes them in JSON; None
    when one of them is something MLflow's entities would not serialize (a NULL user or start
    time), so that MLflow's handler answers it as it does."""
    from mlflow.entities import RunInputs, RunOutputs
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    if not run_ids:
        return []
    cursor.execute(
        "SELECT run_uuid, name, experiment_id, user_id, status, start_time, end_time,"
        " lifecycle_stage, artifact_uri FROM runs WHERE run_uuid = ANY(%s)",
        (run_ids,),
    )
    infos = {row[0]: row for row in cursor.fetchall()}
    values: dict[str, dict[str, list[Any]]] = {
        run_id: {"metrics": [], "params": [], "tags": []} for run_id in infos
    }
    cursor.execute(
        "SELECT run_uuid, key, value, timestamp, step, is_nan FROM latest_metrics"
        " WHERE run_uuid = ANY(%s)",
        (run_ids,),
    )
    for run_id, key, value, timestamp, step, is_nan in cursor.fetchall():
        number = "NaN" if is_nan else _number(value)
        values[run_id]["metrics"].append(
            {"key": key, "value": number, "timestamp": timestamp, "step": step}
        )
    for table in ("params", "tags"):
        cursor.execute(f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid = ANY(%s)",
                       (run_ids,))  # fmt: skip
        for run_id, key, value in cursor.fetchall():
            values[run_id][table].append({"key": key, "value": value})
    present = [run_id for run_id in run_ids if run_id in infos]
    with store.ManagedSessionMaker() as session:  # MLflow's own reads, as its search_runs does
        inputs = store._get_run_inputs(session=session, run_uuids=present)
        outputs = store._get_model_outputs_bulk(run_ids=present, session=session)
    runs = []
    for run_id, dataset_inputs in zip(present, inputs, strict=True):
        run_uuid, name, experiment_id, user_id, status, start, end, stage, uri = infos[run_id]
        if user_id is None or start is None or status is None or stage is None:
            return None
        data = values[run_id]
        if not name:
            # RunInfo takes the name from the mlflow.runName tag when the column is empty.
            tagged = next((t["value"] for t in data["tags"] if t["key"] == MLFLOW_RUN_NAME), None)
            name = tagged or name
        info: dict[str, Any] = {"run_uuid": run_uuid, "experiment_id": str(experiment_id)}
        if name is not None:
            info["run_name"] = name
        info.update(user_id=user_id, status=status, start_time=start)
        if end:
            info["end_time"] = end
        if uri:
            info["artifact_uri"] = uri
        info.update(lifecycle_stage=stage, run_id=run_uuid)
        run: dict[str, Any] = {
            "info": info,
            "data": {kind: items for kind, items in data.items() if items},
            "inputs": _message(RunInputs(dataset_inputs=dataset_inputs).to_proto())
            if dataset_inputs
            else {},
            "outputs": _message(RunOutputs(outputs[run_id]).to_proto())
            if outputs.get(run_id)
            else {},
        }
        runs.append(run)
    return runs


def search(store: Any, query: Query) -> bytes | None:
    """The JSON answer to `query` (MLflow's document, compact), or None for MLflow to answer."""
    import orjson
    from mlflow.utils.search_utils import SearchUtils

    connection = store.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            run_ids = page_run_ids(cursor, query)
            more = len(run_ids) > query.max_results
            runs = fetch_runs(cursor, store, run_ids[: query.max_results])
    finally:
        connection.close()  # back to the store's pool (rolled back)
    if runs is None:
        return None
    document: dict[str, Any] = {"runs": runs} if runs else {}
    if more:
        token = SearchUtils.create_page_token(query.offset + query.max_results)
        document["next_page_token"] = token.decode() if isinstance(token, bytes) else token
    return orjson.dumps(document)


# --- the route ----------------------------------------------------------------------------------

ENDPOINT = "_search_runs"  # the Flask endpoint of both paths (mlflow.server: handler.__name__)


def fast_store() -> Any:
    """MLflow's tracking store when it is the plain SQLAlchemy store on PostgreSQL, else None."""
    from mlflow.server.handlers import _get_tracking_store
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = _get_tracking_store()
    if type(store) is not SqlAlchemyStore or store._get_dialect() != "postgresql":
        return None
    return store


def answer_request() -> Any:
    """The answer to the current Flask request, or None when MLflow's handler must give it."""
    from flask import Response
    from mlflow.entities import ViewType
    from mlflow.protos.service_pb2 import SearchRuns
    from mlflow.server import ARTIFACTS_ONLY_ENV_VAR
    from mlflow.server.handlers import (
        _assert_array,
        _assert_intlike,
        _assert_item_type_string,
        _assert_less_than_or_equal,
        _assert_string,
        _get_request_message,
    )

    if os.environ.get(ARTIFACTS_ONLY_ENV_VAR):  # MLflow's handler refuses, in its words
        return None
    store = fast_store()
    if store is None:
        return None
    try:  # MLflow's handler's schema; on any error its handler answers, in its words
        message = _get_request_message(
            SearchRuns(),
            schema={
                "experiment_ids": [_assert_array],
                "filter": [_assert_string],
                "max_results": [
                    _assert_intlike,
                    lambda x: _assert_less_than_or_equal(int(x), 50000),
                ],
                "order_by": [_assert_array, _assert_item_type_string],
            },
        )
    except Exception:
        return None
    experiment_ids = list(message.experiment_ids)
    try:  # what MLflow's search_runs_impl does with basic auth on
        from mlflow.server import auth

        if auth.auth_config:
            experiment_ids = auth.filter_experiment_ids(experiment_ids)
    except ImportError:
        pass
    view_type = ViewType.ACTIVE_ONLY  # as MLflow's search_runs_impl reads it
    if message.HasField("run_view_type"):
        view_type = ViewType.from_proto(message.run_view_type)
    query = parse(experiment_ids, message.filter, view_type, message.max_results,
                  list(message.order_by), message.page_token or None)  # fmt: skip
    if query is None:
        return None
    body = search(store, query)
    if body is None:
        return None
    return Response(body, mimetype="application/json")


def install(flask_app: Any) -> None:
    """Answer `POST runs/search` (both prefixes) here first, MLflow's handler for the rest."""
    import functools
    import logging

    original = flask_app.view_functions.get(ENDPOINT)
    if original is None or getattr(original, "_mlstack_runs_search", False):
        return
    log = logging.getLogger(__name__)

    @functools.wraps(original)
    def search_runs() -> Any:
        try:
            answer = answer_request()
        except Exception:  # a database hiccup or a bug here: MLflow's handler still answers
            log.exception("mlstack runs/search failed; MLflow's handler answers instead")
            answer = None
        return original() if answer is None else answer

    search_runs._mlstack_runs_search = True  # type: ignore[attr-defined]
    flask_app.view_functions[ENDPOINT] = search_runs
