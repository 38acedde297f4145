"""A run's writes (create, log-batch, update) in one transaction of a few SQL statements each.

Every trainer creates a run, logs through `log_batch` (params and tags once, metrics at every step)
and ends it with `update_run`, and MLflow 3.17's SQLAlchemy store spends most of each call in its
ORM: `log_batch` loads the run with all its params, opens a session per part (params, metrics,
latest metrics, tags), builds an object per row and commits four times; `update_run` and
`create_run` load the run's params, metrics, tags and inputs to answer with its info. About 30 ms of
server CPU for a batch of 20 params (bench/README.md). This stores the same rows with:

- **log-batch**: the run's lifecycle stage (one indexed read); the batch's params that exist already
  (one read), then the new ones (one INSERT); the metrics, `INSERT ... ON CONFLICT DO NOTHING
  RETURNING` (rows already stored are skipped, as MLflow's IntegrityError recovery skips them), and
  the latest value of each key among the rows just inserted, upserted only where it is newer by
  (step, timestamp, value), MLflow's rule; the tags, upserted (the last value of a key in the batch
  wins, as in MLflow); one COMMIT. Keys are written in sorted order, so concurrent batches lock
  rows in one order.
- **create**: the experiment's artifact location and stage (one read), the run and its tags (two
  INSERTs), the answer built as MLflow's store builds it (the same entities; a new run has no
  params, metrics or inputs).
- **update**: one `UPDATE ... RETURNING` of the run's status and end time, answered with its info.

MLflow's handlers parse and check every request as always (`mlflow.server.handlers`); these are
the store's methods underneath, and `log_batch` calls the validators MLflow's store calls, in the
same order, so bad input gets MLflow's own errors. What would not be stored exactly as MLflow's
store stores it is left to MLflow's store after a rollback, so nothing is half written: a run or
experiment that is missing or deleted (MLflow raises its error), a param whose stored value
differs, any insert that meets a conflict, a deadlock or any other database error, metrics of a
logged model (`model_id`), the `mlflow.runName` tag in a batch and a rename in an update (MLflow
keeps the run's name and that tag in step), a run name given twice, duplicate tags, a store that
is not MLflow's plain SQLAlchemy store on PostgreSQL. One difference is deliberate: MLflow commits
a batch's params, metrics and tags separately, so a failure part-way leaves part of it stored;
here a batch is stored whole or not at all.

Answers still come from MLflow's handlers; `X-MLstack-Write: sql` says this module wrote.
`MLSTACK_RUN_WRITES=mlflow` leaves every write to MLflow's store.

tests/integration/test_run_writes.py holds the rows and answers of every call equal to MLflow's
store's for the same requests (NaN, infinities, duplicates, ties, older steps, re-logged params and
metrics, tag overwrites, run names, statuses, errors), and checks concurrent batches lose nothing.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from typing import Any

# The Flask endpoints (mlflow.server: handler.__name__, both path prefixes) and the store methods
# they call.
ENDPOINTS = ("_create_run", "_log_batch", "_update_run")
HEADER = "X-MLstack-Write"
RUN_NAME_TAG = "mlflow.runName"  # mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME
_WROTE = "mlstack_run_writes"  # flask.g: this request's write was made here
_EXPERIMENT_ID = re.compile(r"0|[1-9][0-9]{0,8}")  # as str(int(x)) writes it, within INTEGER
RETRIES = 3  # log-batch transactions that meet a concurrent one, before MLflow's store is asked
_RUN_COLUMNS = ("run_uuid, name, experiment_id, user_id, status, start_time, end_time,"
                " lifecycle_stage, artifact_uri")  # fmt: skip

log = logging.getLogger(__name__)


def enabled(value: str | None) -> bool:
    """MLSTACK_RUN_WRITES: `sql` (the default) writes runs here where it can; `mlflow` leaves
    every write to MLflow's store."""
    from mlstack.tracking_app import sql_route_enabled

    return sql_route_enabled("MLSTACK_RUN_WRITES", value)


def metric_rows(store: Any, metrics: list[Any]) -> list[tuple[str, float, int, int, bool]] | None:
    """(key, value, timestamp, step, is_nan) per metric, MLflow's sanitising and order; first
    occurrences only. None when a metric belongs to a logged model (MLflow's store writes those)."""
    rows: list[tuple[str, float, int, int, bool]] = []
    seen: set[tuple[str, float, int, int, bool]] = set()
    for metric in metrics:
        if metric.model_id is not None:
            return None
        is_nan, value = store.sanitize_metric_value(metric.value)
        row = (metric.key, float(value), int(metric.timestamp), int(metric.step), is_nan)
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


def latest_rows(inserted: list[tuple[str, float, int, int, bool]]) -> list[tuple[Any, ...]]:
    """Per key, the newest of `inserted` by (step, timestamp, value): the first to be strictly
    newer than all before it, as MLflow's `_update_latest_metrics_if_necessary` keeps it."""
    newest: dict[str, tuple[str, float, int, int, bool]] = {}
    for row in inserted:
        key, value, timestamp, step, _ = row
        best = newest.get(key)
        if best is None or (step, timestamp, value) > (best[3], best[2], best[1]):
            newest[key] = row
    return [newest[key] for key in sorted(newest)]


def write(store: Any, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> bool:
    """Store a validated batch in one transaction; False (nothing written) when MLflow must."""
    from psycopg2.extras import execute_values

    rows = metric_rows(store, metrics)
    if rows is None or any(tag.key == RUN_NAME_TAG for tag in tags):
        return False
    connection = store.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = %s", (run_id,))
            stage = cursor.fetchone()
            if stage is None or stage[0] != "active":
                return False
            if params:
                cursor.execute(
                    "SELECT key, value FROM params WHERE run_uuid = %s AND key = ANY(%s)",
                    (run_id, [param.key for param in params]),
                )
                stored = dict(cursor.fetchall())
                if any(stored[p.key] != p.value for p in params if p.key in stored):
                    return False
                new = sorted((p.key, p.value, run_id) for p in params if p.key not in stored)
                if new:
                    execute_values(
                        cursor, "INSERT INTO params (key, value, run_uuid) VALUES %s", new,
                        page_size=len(new),
                    )  # fmt: skip
            if rows:
                inserted = execute_values(
                    cursor,
                    "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES %s"
                    " ON CONFLICT DO NOTHING RETURNING key, value, timestamp, step, is_nan",
                    [(*row, run_id) for row in rows],
                    page_size=len(rows),
                    fetch=True,
                )
                written = {tuple(row) for row in inserted}
                latest = latest_rows([row for row in rows if row in written])
                if latest:
                    execute_values(
                        cursor,
                        "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)"
                        " VALUES %s ON CONFLICT (key, run_uuid) DO UPDATE SET"
                        " value = EXCLUDED.value, timestamp = EXCLUDED.timestamp,"
                        " step = EXCLUDED.step, is_nan = EXCLUDED.is_nan"
                        " WHERE (EXCLUDED.step, EXCLUDED.timestamp, EXCLUDED.value)"
                        " > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
                        [(*row, run_id) for row in latest],
                        page_size=len(latest),
                    )
            if tags:
                values = {tag.key: tag.value for tag in tags}  # the last of a key wins
                execute_values(
                    cursor,
                    "INSERT INTO tags (key, value, run_uuid) VALUES %s"
                    " ON CONFLICT (key, run_uuid) DO UPDATE SET value = EXCLUDED.value",
                    [(key, values[key], run_id) for key in sorted(values)],
                    page_size=len(values),
                )
        connection.commit()
        return True
    finally:
        connection.close()  # back to the store's pool; rolled back unless committed


def wrote() -> None:
    """Mark the current request as written here (the view adds the header)."""
    from flask import g, has_request_context

    if has_request_context():
        setattr(g, _WROTE, True)


def fast_log_batch(store: Any, original: Any) -> Any:
    """`store.log_batch`: MLflow's validation, then `write`, else MLflow's own `log_batch`."""
    from mlflow.utils.validation import (
        _validate_batch_log_data,
        _validate_batch_log_limits,
        _validate_param_keys_unique,
        _validate_run_id,
    )
    from psycopg2.errors import DeadlockDetected, UniqueViolation

    def log_batch(run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
        # What MLflow's SqlAlchemyStore.log_batch checks first, in its order, with its errors.
        _validate_run_id(run_id)
        checked_metrics, checked_params, checked_tags = _validate_batch_log_data(
            metrics, params, tags
        )
        _validate_batch_log_limits(checked_metrics, checked_params, checked_tags)
        _validate_param_keys_unique(checked_params)
        done = False
        for _ in range(RETRIES):
            try:
                done = write(store, run_id, checked_metrics, checked_params, checked_tags)
            except (UniqueViolation, DeadlockDetected):
                # A concurrent batch inserted the same new param first, or two batches locked
                # rows across each other: a fresh transaction sees what the other committed.
                log.debug("mlstack retries a batch", exc_info=True)
                continue
            except Exception:  # a lost connection, anything unforeseen: MLflow's store decides
                log.debug("mlstack left a batch to MLflow's store", exc_info=True)
            break
        if not done:
            return original(run_id=run_id, metrics=metrics, params=params, tags=tags)
        wrote()
        return None

    return log_batch


_INT64 = (-(2**63), 2**63 - 1)
_EXACT = 2**53  # ints a double holds exactly
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # protobuf's JSON
_BATCH_FIELDS = frozenset(("run_id", "metrics", "params", "tags"))
_METRIC_FIELDS = frozenset(("key", "value", "timestamp", "step"))
_PAIR_FIELDS = frozenset(("key", "value"))


def _int64(value: Any) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _metric_value(value: Any) -> float | None:
    if type(value) is float:  # protobuf refuses a bare NaN or Infinity (JSON has neither)
        return value if math.isfinite(value) else None
    if type(value) is int and -_EXACT <= value <= _EXACT:
        return float(value)
    return _SPECIAL.get(value) if type(value) is str else None


def _pairs(items: Any, kind: Any) -> list[Any] | None:
    if type(items) is not list:
        return None
    pairs = []
    for item in items:
        if type(item) is not dict or item.keys() != _PAIR_FIELDS:
            return None
        key, value = item["key"], item["value"]
        if type(key) is not str or not key or type(value) is not str:
            return None
        pairs.append(kind(key, value))
    return pairs


def parse_batch(body: Any) -> tuple[str, list[Any], list[Any], list[Any]] | None:
    """A log-batch request as MLflow's handler reads it (run id, Metric, Param and RunTag
    entities, equal to what protobuf's parser and `from_proto` give), for the plain shape clients
    send: every field a JSON string or number of its type. None for anything else, which MLflow's
    handler then parses (numbers in strings, missing or extra fields, nulls, booleans, ...)."""
    from mlflow.entities import Metric, Param, RunTag

    if type(body) is not dict or not body.keys() <= _BATCH_FIELDS:
        return None
    run_id = body.get("run_id")
    if type(run_id) is not str or not run_id:
        return None
    items = body.get("metrics", [])
    if type(items) is not list:
        return None
    metrics = []
    for item in items:
        if type(item) is not dict or not _METRIC_FIELDS - {"step"} <= item.keys() <= _METRIC_FIELDS:
            return None
        key, value = item["key"], _metric_value(item["value"])
        timestamp, step = item["timestamp"], item.get("step", 0)
        if type(key) is not str or not key or value is None or not _int64(timestamp):
            return None
        if not _int64(step):
            return None
        metrics.append(Metric(key, value, timestamp, step))
    params = _pairs(body.get("params", []), Param)
    tags = _pairs(body.get("tags", []), RunTag)
    if params is None or tags is None:
        return None
    return run_id, metrics, params, tags


def log_batch_view(original: Any) -> Any:
    """MLflow's `_log_batch` view for the plain shape of request (`parse_batch`): the same checks,
    store call and answer, without protobuf's pure-Python JSON parser (about a third of a
    1,000-metric batch's time); MLflow's own view for any other shape."""
    from flask import Response
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.server.handlers import (
        _disable_if_artifacts_only,
        _get_request_json,
        _get_tracking_store,
        catch_mlflow_exception,
    )
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.validation import _validate_batch_log_api_req

    answer = message_to_json(LogBatch.Response())

    @catch_mlflow_exception
    @_disable_if_artifacts_only
    def view() -> Any:
        body = _get_request_json()  # MLflow's: its content-type check, its JSON parser
        batch = parse_batch(body)
        if batch is None:
            return original()
        _validate_batch_log_api_req(body)
        run_id, metrics, params, tags = batch
        _get_tracking_store().log_batch(run_id=run_id, metrics=metrics, params=params, tags=tags)
        return Response(answer, mimetype="application/json")

    return view


def insert_run(store: Any, experiment_id: str, user_id: str, start_time: int, tags: list[Any],
               run_name: str) -> Any:  # fmt: skip
    """The new run as MLflow's `create_run` returns it, or None (nothing written) when MLflow's
    store must create it."""
    from mlflow.entities import Run, RunData, RunInfo, RunInputs, RunStatus, RunTag, SourceType
    from mlflow.entities.lifecycle_stage import LifecycleStage
    from mlflow.utils.mlflow_tags import _get_run_name_from_tags
    from mlflow.utils.name_utils import _generate_random_name
    from mlflow.utils.uri import append_to_uri_path
    from psycopg2.extras import execute_values

    if not isinstance(experiment_id, str) or not _EXPERIMENT_ID.fullmatch(experiment_id):
        return None
    tags = list(tags or [])
    if len({tag.key for tag in tags}) != len(tags):
        return None  # MLflow's store fails on the duplicate; let it say so
    name_tag = _get_run_name_from_tags(tags)
    if run_name and name_tag and run_name != name_tag:
        return None  # MLflow's error, after its experiment check
    connection = store.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT artifact_location, lifecycle_stage FROM experiments"
                " WHERE experiment_id = %s",
                (int(experiment_id),),
            )
            found = cursor.fetchone()
            if found is None or found[1] != LifecycleStage.ACTIVE:
                return None
            run_id = uuid.uuid4().hex
            artifact_uri = append_to_uri_path(found[0], run_id, store.ARTIFACTS_FOLDER_NAME)
            run_name = run_name or name_tag or _generate_random_name()
            if not name_tag:
                tags.append(RunTag(key=RUN_NAME_TAG, value=run_name))
            status = RunStatus.to_string(RunStatus.RUNNING)
            cursor.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name,"
                " user_id, status, start_time, end_time, deleted_time, source_version,"
                " lifecycle_stage, artifact_uri, experiment_id)"
                " VALUES (%s, %s, %s, '', '', %s, %s, %s, NULL, NULL, '', %s, %s, %s)",
                (run_id, run_name, SourceType.to_string(SourceType.UNKNOWN), user_id, status,
                 start_time, LifecycleStage.ACTIVE, artifact_uri, int(experiment_id)),
            )  # fmt: skip
            if tags:
                execute_values(
                    cursor, "INSERT INTO tags (key, value, run_uuid) VALUES %s",
                    [(tag.key, tag.value, run_id) for tag in tags], page_size=len(tags),
                )  # fmt: skip
        connection.commit()
    finally:
        connection.close()  # back to the store's pool; rolled back unless committed
    info = RunInfo(run_id=run_id, experiment_id=experiment_id, user_id=user_id, status=status,
                   start_time=start_time, end_time=None, lifecycle_stage=LifecycleStage.ACTIVE,
                   artifact_uri=artifact_uri, run_name=run_name)  # fmt: skip
    data = RunData(metrics=[], params=[], tags=[RunTag(t.key, t.value) for t in tags])
    return Run(info, data, RunInputs(dataset_inputs=[]))


def fast_create_run(store: Any, original: Any) -> Any:
    """`store.create_run`: `insert_run`, else MLflow's own `create_run`."""

    def create_run(experiment_id: str, user_id: str, start_time: int, tags: list[Any],
                   run_name: str) -> Any:  # fmt: skip
        try:
            run = insert_run(store, experiment_id, user_id, start_time, tags, run_name)
        except Exception:
            log.debug("mlstack left a new run to MLflow's store", exc_info=True)
            run = None
        if run is None:
            return original(experiment_id=experiment_id, user_id=user_id, start_time=start_time,
                            tags=tags, run_name=run_name)  # fmt: skip
        wrote()
        return run

    return create_run


def update_run(store: Any, run_id: str, run_status: Any, end_time: int | None) -> Any:
    """The run's info after the update, as MLflow's `update_run_info` returns it, or None
    (nothing written) when MLflow's store must update it."""
    from mlflow.entities import RunInfo, RunStatus
    from mlflow.entities.lifecycle_stage import LifecycleStage

    sets, values = [], []
    if run_status is not None:
        sets.append("status = %s")
        values.append(RunStatus.to_string(run_status))
    if end_time is not None:
        sets.append("end_time = %s")
        values.append(end_time)
    where = " WHERE run_uuid = %s AND lifecycle_stage = %s"
    if sets:
        sql = f"UPDATE runs SET {', '.join(sets)}{where} RETURNING {_RUN_COLUMNS}"
    else:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs{where}"
    connection = store.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, (*values, run_id, LifecycleStage.ACTIVE))
            row = cursor.fetchone()
            if row is None or not row[1]:
                return None  # missing, deleted, or nameless (MLflow then names it from its tags)
        connection.commit()
    finally:
        connection.close()  # back to the store's pool; rolled back unless committed
    run_uuid, name, experiment_id, user_id, status, start_time, end, stage, artifact_uri = row
    return RunInfo(run_id=run_uuid, experiment_id=str(experiment_id), user_id=user_id,
                   status=status, start_time=start_time, end_time=end, lifecycle_stage=stage,
                   artifact_uri=artifact_uri, run_name=name)  # fmt: skip


def fast_update_run_info(store: Any, original: Any) -> Any:
    """`store.update_run_info`: `update_run` unless it renames, else MLflow's own."""

    def update_run_info(run_id: str, run_status: Any, end_time: int | None,
                        run_name: str | None) -> Any:  # fmt: skip
        info = None
        if not run_name:
            try:
                info = update_run(store, run_id, run_status, end_time)
            except Exception:
                log.debug("mlstack left a run's update to MLflow's store", exc_info=True)
        if info is None:
            return original(run_id, run_status, end_time, run_name)
        wrote()
        return info

    return update_run_info


FAST = {"create_run": fast_create_run, "log_batch": fast_log_batch,
        "update_run_info": fast_update_run_info}  # fmt: skip


_patching = threading.Lock()


def patch_store(store: Any) -> None:
    """Put this module's methods in front of the store's own (once per store, whichever of a
    worker's request threads comes first)."""
    with _patching:
        if getattr(store, "_mlstack_run_writes", False):
            return
        for name, fast in FAST.items():
            setattr(store, name, fast(store, getattr(store, name)))
        store._mlstack_run_writes = True


def install(flask_app: Any) -> None:
    """Write runs here first, under MLflow's own handlers for create, log-batch and update."""
    import functools

    from mlstack.runs_search import fast_store

    def wrap(endpoint: str, original: Any) -> Any:
        answer = log_batch_view(original) if endpoint == "_log_batch" else original

        @functools.wraps(original)
        def view() -> Any:
            from flask import g

            store = fast_store()
            if store is None:
                return original()
            patch_store(store)
            response = answer()
            if getattr(g, _WROTE, False):
                response.headers[HEADER] = "sql"
            return response

        view._mlstack_run_writes = True  # type: ignore[attr-defined]
        return view

    for endpoint in ENDPOINTS:
        original = flask_app.view_functions.get(endpoint)
        if original is not None and not getattr(original, "_mlstack_run_writes", False):
            flask_app.view_functions[endpoint] = wrap(endpoint, original)
