"""Service-free checks of the rollout parts: agreement, sticky buckets, the guard's window,
the guard record `mlstack promote` reads from /metrics."""

from __future__ import annotations

import time

import orjson
import pytest

from mlstack.serving.promote import guard_record
from mlstack.serving.rollout import Guard, RolloutConfig, agreement, coin, sticky_bucket

pytestmark = pytest.mark.unit


def answer(predictions: object) -> bytes:
    return orjson.dumps({"predictions": predictions})


@pytest.mark.parametrize(
    ("champion", "challenger", "expected"),
    [
        ([0, 1, 1, 0], [0, 1, 0, 0], (3, 4)),  # classes: equal or not
        (["a", "b"], ["a", "c"], (1, 2)),
        ([1.0, 2.0], [1.0 + 1e-9, 2.1], (1, 2)),  # numbers: within the tolerance
        ([1.0, 2.0], [1.0, 2.0, 3.0], (0, 2)),  # different lengths: every row disagrees
        ([[0.1, 0.9]], [[0.1, 0.9000000001]], (1, 1)),  # rows of probabilities
        ([{"a": 1.0}], [{"a": 1.0, "b": 2}], (0, 1)),
        ([True], [1], (0, 1)),  # a boolean is not a number here
    ],
)
def test_agreement_counts_rows(champion: list, challenger: list, expected: tuple) -> None:
    assert agreement(answer(champion), answer(challenger), 1e-6) == expected


def test_agreement_reads_v2_answers_and_survives_garbage() -> None:
    v2 = orjson.dumps({"outputs": [{"name": "predict", "data": [1, 2, 3]}]})
    assert agreement(v2, orjson.dumps({"outputs": [{"data": [1, 2, 4]}]}), 0) == (2, 3)
    assert agreement(answer([1, 2]), b"not json", 0) == (0, 2)
    assert agreement(b"not json", answer([1]), 0) == (0, 0)


def test_sticky_buckets_are_stable_and_spread() -> None:
    assert sticky_bucket(b"user-1") == sticky_bucket(b"user-1")
    buckets = [sticky_bucket(f"user-{i}".encode()) for i in range(2000)]
    assert all(0 <= b < 100 for b in buckets)
    below_30 = sum(b < 30 for b in buckets)
    assert 500 <= below_30 <= 700  # Binomial(2000, 0.3): mean 600, sd 20.5


def test_coin_bounds() -> None:
    assert not any(coin(0) for _ in range(1000))
    assert all(coin(100) for _ in range(1000))


def config(**overrides: float) -> RolloutConfig:
    values = {"guard_max_error_ratio": 0.1, "guard_max_p99_seconds": 0.5, "guard_window_seconds": 60.0, "guard_min_requests": 10}  # fmt: skip
    values.update(overrides)
    return RolloutConfig(challenger_alias="challenger", **values)  # type: ignore[arg-type]


def wait_evaluation() -> None:
    time.sleep(0.3)  # the guard evaluates at most every 0.25 s


def test_guard_needs_min_requests_then_trips_on_errors() -> None:
    changes: list[bool] = []
    guard = Guard(config(), lambda g: changes.append(g.tripped), model="m")
    guard.reset("2")
    for _ in range(5):
        guard.record(False, 0.01)
    wait_evaluation()
    guard.record(False, 0.01)
    assert not guard.tripped  # 6 answers: below min_requests
    for _ in range(10):
        guard.record(True, 0.01)
    wait_evaluation()
    guard.record(True, 0.01)
    assert guard.tripped
    assert "error ratio" in (guard.state.reason or "")
    assert guard.describe()["window"]["errors"] == 6
    assert changes == [False, True]
    guard.reset("3")  # a new challenger version
    assert not guard.tripped and guard.describe()["window"]["requests"] == 0


def test_guard_trips_on_p99_and_on_load_failure() -> None:
    guard = Guard(config(), model="m")
    guard.reset("2")
    for _ in range(20):
        guard.record(True, 0.01)
    guard.record(True, 2.0)
    wait_evaluation()
    guard.record(True, 2.0)
    assert guard.tripped and "p99" in (guard.state.reason or "")
    broken = Guard(config(), model="m")
    broken.reset("5")
    broken.trip("loading models:/m/5 failed: boom", load_failure=True)
    assert broken.tripped and broken.state.load_failure


def test_guard_window_forgets_old_answers() -> None:
    guard = Guard(config(guard_window_seconds=0.2), model="m")
    guard.reset("2")
    for _ in range(20):
        guard.record(False, 0.01)  # evaluated on the first: below min_requests then
    time.sleep(0.4)
    assert guard.describe()["window"]["requests"] == 0


METRICS = """\
# TYPE mlstack_serving_guard_tripped gauge
mlstack_serving_guard_tripped{model="churn",version="4"} 1.0
mlstack_serving_guard_tripped{model="churn",version="5"} 0.0
mlstack_serving_guard_tripped{model="other",version="4"} 0.0
"""


def test_guard_record_read_by_promote() -> None:
    assert guard_record(METRICS, "churn", "4") is True
    assert guard_record(METRICS, "churn", "5") is False
    assert guard_record(METRICS, "churn", "6") is None
    assert guard_record(METRICS, "other", "4") is False
