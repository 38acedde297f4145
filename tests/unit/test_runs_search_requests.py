"""Which runs/search requests mlstack/runs_search.py answers itself, and which it leaves to
MLflow's handler (None): everything it cannot answer exactly as MLflow does. Its answers are held
equal to MLflow's in tests/integration/test_runs_search.py."""

from __future__ import annotations

import pytest

from mlstack.runs_search import MetricFilter, Order, page_sql, parse

pytestmark = pytest.mark.unit

ACTIVE, DELETED, ALL = 1, 2, 3


def test_the_ui_runs_table_is_taken() -> None:
    query = parse(["3"], "", ACTIVE, 100, ["attributes.start_time DESC"], None)
    assert query is not None
    assert (query.experiment_ids, query.stages, query.max_results, query.offset) == (
        [3], ("active",), 100, 0)  # fmt: skip
    assert query.orders == [Order("start_time", "start_time", False)]


def test_metric_filters_and_orders_are_taken_with_mlflows_parser() -> None:
    query = parse(["1", "2"], "metrics.m0 > 0.5 and metrics.`a b` != -1", ALL, 7,
                  ["metrics.`m1` DESC", "created ASC"], "eyJvZmZzZXQiOiAxNH0=")  # fmt: skip
    assert query is not None
    assert query.filters == [MetricFilter("m0", ">", 0.5), MetricFilter("a b", "!=", -1.0)]
    assert query.orders == [Order("metric", "m1", False), Order("start_time", "start_time", True)]
    assert (query.stages, query.offset) == (("active", "deleted"), 14)


@pytest.mark.parametrize(
    ("experiment_ids", "filter_string", "view", "max_results", "order_by", "token"),
    [
        ([], "", ACTIVE, 100, [], None),  # no experiment
        (["x1"], "", ACTIVE, 100, [], None),  # not an experiment id
        (["1"], "params.p = '1'", ACTIVE, 100, [], None),
        (["1"], "tags.t = 'x'", ACTIVE, 100, [], None),
        (["1"], "attributes.status = 'FINISHED'", ACTIVE, 100, [], None),
        (["1"], "metrics.m IS NULL", ACTIVE, 100, [], None),
        (["1"], "metrics.m >", ACTIVE, 100, [], None),  # MLflow's parser refuses it
        (["1"], "", ACTIVE, 100, ["params.p"], None),
        (["1"], "", ACTIVE, 100, ["attributes.run_name"], None),
        (["1"], "", ACTIVE, 100, ["metrics.m", "metrics.m DESC"], None),  # duplicate
        (["1"], "", ACTIVE, 0, [], None),
        (["1"], "", ACTIVE, 50_001, [], None),
        (["1"], "", 4, 100, [], None),
        (["1"], "", ACTIVE, 100, [], "not-a-token"),
        (["1"], "", ACTIVE, 100, [], "eyJvZmZzZXQiOiAtNX0="),  # {"offset": -5}
    ],
)
def test_the_rest_is_left_to_mlflow(experiment_ids: list[str], filter_string: str, view: int,
                                    max_results: int, order_by: list[str],
                                    token: str | None) -> None:  # fmt: skip
    assert parse(experiment_ids, filter_string, view, max_results, order_by, token) is None


def test_a_metric_order_is_read_group_by_group() -> None:
    """Numbers, then NaNs, then runs without the metric, as MLflow's CASE orders them."""
    query = parse(["1"], "metrics.m0 >= 0.5", ACTIVE, 10, ["metrics.m1"], None)
    assert query is not None
    numbers, numbers_args = page_sql(query, 0, 11)
    assert "o0.is_nan = %s" in numbers and numbers_args[-3:] == [1, ["active"], 11]
    assert numbers_args[:4] == ["m0", 0.5, "m1", False]
    assert "ORDER BY o0.value, r.start_time DESC, r.run_uuid" in numbers
    _, nans_args = page_sql(query, 1, 11)
    assert nans_args[:4] == ["m0", 0.5, "m1", True]
    missing, missing_args = page_sql(query, 2, 11)
    assert "NOT EXISTS" in missing and "o0" not in missing and missing_args[-2:] == ["m1", 11]
