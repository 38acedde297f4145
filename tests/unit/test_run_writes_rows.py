"""mlstack/run_writes.py's row rules, without a database (the oracle test against MLflow's store is
tests/integration/test_run_writes.py)."""

from __future__ import annotations

import math

from mlflow.entities import Metric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mlstack.run_writes import latest_rows, metric_rows


class Store:
    sanitize_metric_value = SqlAlchemyStore.sanitize_metric_value


def test_metrics_are_sanitised_as_mlflow_stores_them_and_repeats_dropped() -> None:
    rows = metric_rows(Store(), [
        Metric("a", math.nan, 5, 1), Metric("a", math.nan, 5, 1), Metric("b", math.inf, 5, 1),
        Metric("c", -math.inf, 5, 1), Metric("d", 2, 5, 1), Metric("d", 2.0, 5, 1),
    ])  # fmt: skip
    assert rows == [("a", 0.0, 5, 1, True), ("b", 1.7976931348623157e308, 5, 1, False),
                    ("c", -1.7976931348623157e308, 5, 1, False), ("d", 2.0, 5, 1, False)]  # fmt: skip


def test_a_logged_models_metrics_are_left_to_mlflow() -> None:
    assert (
        metric_rows(Store(), [Metric("a", 1.0, 5, 1), Metric("b", 1.0, 5, 1, model_id="m-1")])
        is None
    )


def test_the_latest_value_is_the_first_strictly_newest_by_step_timestamp_value() -> None:
    rows = [("k", 0.5, 10, 3, False), ("k", 0.9, 10, 2, False), ("k", 0.4, 20, 3, False),
            ("k", 0.0, 20, 3, True), ("k", 0.4, 20, 3, False), ("j", 1.0, 1, 0, False)]  # fmt: skip
    # step first, then timestamp, then value; a tie keeps the first (MLflow's strict comparison)
    assert latest_rows(rows) == [("j", 1.0, 1, 0, False), ("k", 0.4, 20, 3, False)]
    tie = [("t", 0.0, 1, 1, False), ("t", 0.0, 1, 1, True)]
    assert latest_rows(tie) == [("t", 0.0, 1, 1, False)]


def test_a_store_is_patched_once_whatever_the_threads() -> None:
    """Every request thread of a worker patches the store on its first write; MLflow's methods
    must end up wrapped once, not once per thread."""
    import threading

    from mlstack.run_writes import FAST, patch_store

    class Plain:
        def create_run(self, **_: object) -> str:
            return "mlflow"

        def log_batch(self, **_: object) -> str:
            return "mlflow"

        def update_run_info(self, *_: object) -> str:
            return "mlflow"

    store = Plain()
    originals = {name: getattr(store, name) for name in FAST}
    threads = [threading.Thread(target=patch_store, args=(store,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    patch_store(store)
    for name in FAST:
        closure = [cell.cell_contents for cell in getattr(store, name).__closure__ or ()]
        assert originals[name] in closure, name  # wrapped directly around MLflow's method
