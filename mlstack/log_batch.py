"""`POST runs/log-batch` written in one transaction of a few SQL statements, ahead of MLflow's store.

Every trainer logs through `log_batch` (params and tags once, metrics at every step), and MLflow
3.17's SQLAlchemy store spends most of a call in the ORM: it loads the run with all its params,
opens a session per part (params, metrics, latest metrics, tags), builds an object per row and
commits four times, about 30 ms of server CPU for 20 params (bench/README.md). This writes the
same rows with

1. the run's lifecycle stage (one indexed read);
2. the batch's params that exist already (one read), then the new ones (one INSERT);
3. the metrics, `INSERT ... ON CONFLICT DO NOTHING RETURNING` (rows already stored are skipped, as
   MLflow's IntegrityError recovery skips them), and the latest value of each key among the rows
   just inserted, upserted only where it is newer by (step, timestamp, value), MLflow's rule;
4. the tags, upserted (the last value of a key in the batch wins, as in MLflow);

and one COMMIT. Keys are written in sorted order, so concurrent batches lock rows in one order.

Only MLflow's handler and its store's validation run first, unchanged: the request is parsed,
checked and limited by MLflow (`mlflow.server.handlers._log_batch`), and this calls the same
validators its store calls, in the same order, so a bad batch gets MLflow's own error. What this
does not write exactly as MLflow would, it leaves to MLflow's `log_batch`, after rolling back, so
nothing is half written: a run that is missing or deleted (MLflow raises its error), a param whose
stored value differs (MLflow raises its error), any insert that meets a conflict, a deadlock or any
other database error, metrics of a logged model (`model_id`), the `mlflow.runName` tag (MLflow keeps
the run's name in step with it), a store that is not MLflow's plain SQLAlchemy store on PostgreSQL.
One difference is deliberate: MLflow commits params, metrics and tags separately, so a failure
part-way leaves part of a batch stored; here a batch is stored whole or not at all.

The answer comes from MLflow's handler as always; `X-MLstack-Log-Batch: sql` says this module
wrote the batch. `MLSTACK_LOG_BATCH=mlflow` leaves every batch to MLflow's store.

tests/integration/test_log_batch.py holds the rows written here equal to the rows MLflow's store
writes for the same requests (NaN, infinities, duplicates, ties, older steps, re-logged params and
metrics, tag overwrites) and every error equal to MLflow's.
"""

from __future__ import annotations

import logging
from typing import Any

ENDPOINT = "_log_batch"  # the Flask endpoint of both paths (mlflow.server: handler.__name__)
HEADER = "X-MLstack-Log-Batch"
RUN_NAME_TAG = "mlflow.runName"  # mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME
_WROTE = "mlstack_log_batch"  # flask.g: this request's batch was written here

log = logging.getLogger(__name__)


def enabled(value: str | None) -> bool:
    """MLSTACK_LOG_BATCH: `sql` (the default) writes batches here where it can; `mlflow` leaves
    every batch to MLflow's store."""
    mode = value or "sql"
    if mode not in ("sql", "mlflow"):
        raise ValueError(f"MLSTACK_LOG_BATCH must be sql or mlflow, not {value!r}")
    return mode == "sql"


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


def fast_log_batch(store: Any, original: Any) -> Any:
    """`store.log_batch`: MLflow's validation, then `write`, else MLflow's own `log_batch`."""
    from mlflow.utils.validation import (
        _validate_batch_log_data,
        _validate_batch_log_limits,
        _validate_param_keys_unique,
        _validate_run_id,
    )

    def log_batch(run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
        # What MLflow's SqlAlchemyStore.log_batch checks first, in its order, with its errors.
        _validate_run_id(run_id)
        checked_metrics, checked_params, checked_tags = _validate_batch_log_data(
            metrics, params, tags
        )
        _validate_batch_log_limits(checked_metrics, checked_params, checked_tags)
        _validate_param_keys_unique(checked_params)
        try:
            wrote = write(store, run_id, checked_metrics, checked_params, checked_tags)
        except Exception:  # a conflict, a deadlock, a lost connection: MLflow's store decides
            log.debug("mlstack log-batch left a batch to MLflow's store", exc_info=True)
            wrote = False
        if not wrote:
            return original(run_id=run_id, metrics=metrics, params=params, tags=tags)
        from flask import g, has_request_context

        if has_request_context():
            setattr(g, _WROTE, True)
        return None

    log_batch._mlstack_log_batch = True  # type: ignore[attr-defined]
    return log_batch


def install(flask_app: Any) -> None:
    """Write `POST runs/log-batch` (both prefixes) here first, through MLflow's own handler."""
    import functools

    from mlstack.runs_search import fast_store

    original = flask_app.view_functions.get(ENDPOINT)
    if original is None or getattr(original, "_mlstack_log_batch", False):
        return

    @functools.wraps(original)
    def log_batch_view() -> Any:
        from flask import g

        store = fast_store()
        if store is not None and not getattr(store.log_batch, "_mlstack_log_batch", False):
            store.log_batch = fast_log_batch(store, store.log_batch)
        response = original()
        if getattr(g, _WROTE, False):
            response.headers[HEADER] = "sql"
        return response

    log_batch_view._mlstack_log_batch = True  # type: ignore[attr-defined]
    flask_app.view_functions[ENDPOINT] = log_batch_view
