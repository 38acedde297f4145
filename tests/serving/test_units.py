"""Service-free checks of URI parsing and of when the fast path declines."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlstack.serving.fastpath import FastPredictor, FastSpec
from mlstack.serving.registry import ModelRef

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "kind", "name", "alias", "version"),
    [
        ("models:/churn@champion", "alias", "churn", "champion", None),
        ("models:/churn/3", "version", "churn", None, "3"),
        ("models:/churn/latest", "latest", "churn", None, None),
        ("models:/churn/Production", "other", "churn", None, None),
        ("runs:/abc/model", "other", None, None, None),
        ("/tmp/model", "other", None, None, None),
    ],
)
def test_model_ref_parse(
    uri: str, kind: str, name: str | None, alias: str | None, version: str | None
) -> None:
    ref = ModelRef.parse(uri)
    assert (ref.kind, ref.name, ref.alias, ref.version) == (kind, name, alias, version)


def test_concrete_uri_pins_the_version() -> None:
    assert ModelRef.parse("models:/m@a").concrete_uri("7") == "models:/m/7"
    assert ModelRef.parse("runs:/x/model").concrete_uri(None) == "runs:/x/model"


COLUMNS = ("a", "b", "c")


def predictor(longs: frozenset[int] = frozenset()) -> tuple[FastPredictor, list[np.ndarray]]:
    seen: list[np.ndarray] = []

    def predict(array: np.ndarray) -> np.ndarray:
        seen.append(array)
        return array.sum(axis=1)

    dtype = np.dtype(np.int64) if len(longs) == 3 else np.dtype(np.float64)
    return FastPredictor(FastSpec(COLUMNS, longs, 3, dtype), predict), seen


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["a", "b", "c"], "data": [[1, 2.5, 3]]}},
        {"dataframe_split": {"columns": ["c", "b", "a"], "data": [[3, 2.5, 1]], "index": [0]}},
        {"dataframe_records": [{"a": 1, "b": 2.5, "c": 3}]},
        {"instances": [{"c": 3, "a": 1, "b": 2.5}]},
        {"inputs": {"a": [1], "b": [2.5], "c": [3]}},
    ],
)
def test_fast_path_answers_plain_numbers(payload: dict[str, object]) -> None:
    fast, seen = predictor()
    assert fast.try_predict(orjson.dumps(payload)) == b'{"predictions":[6.5]}'
    assert seen[0].tolist() == [[1.0, 2.5, 3.0]]
    assert seen[0].flags["F_CONTIGUOUS"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, NaN, 3]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, 2, 3]]}, "params": {}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, 2, 3]]}, "x": 1}',
        b'{"dataframe_split": {"columns": ["a","b"], "data": [[1, 2]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c","d"], "data": [[1, 2, 3, 4]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": []}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, 2]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, "2", 3]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, true, 3]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, null, 3]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, [2], 3]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, 1e999, 3]]}}',
        b'{"dataframe_split": {"columns": ["a","b","c"], "data": [[1, 9007199254740993, 3]]}}',
        b'{"dataframe_records": [{"a": 1, "b": 2}]}',
        b'{"dataframe_records": [{"a": 1, "b": 2, "c": 3, "d": 4}]}',
        b'{"dataframe_records": []}',
        b'{"dataframe_records": {"a": 1, "b": 2, "c": 3}}',
        b'{"instances": [[1, 2, 3]]}',
        b'{"inputs": {"a": [1], "b": [2], "c": [3, 4]}}',
        b"[1, 2, 3]",
        b"{not json",
        b"",
    ],
)
def test_fast_path_declines_what_mlflow_must_decide(body: bytes) -> None:
    fast, seen = predictor()
    assert fast.try_predict(body) is None
    assert not seen


def test_long_columns_take_integers_only() -> None:
    fast, _ = predictor(longs=frozenset({0}))
    ok = b'{"dataframe_records": [{"a": 1, "b": 2.5, "c": 3}]}'
    assert fast.try_predict(ok) == b'{"predictions":[6.5]}'
    assert fast.try_predict(b'{"dataframe_records": [{"a": 1.0, "b": 2.5, "c": 3}]}') is None


def test_estimator_errors_fall_back() -> None:
    def broken(array: np.ndarray) -> np.ndarray:
        raise ValueError("boom")

    fast = FastPredictor(FastSpec(COLUMNS, frozenset(), 3, np.dtype(np.float64)), broken)
    assert fast.try_predict(b'{"dataframe_records": [{"a": 1, "b": 2, "c": 3}]}') is None


@pytest.mark.parametrize(
    ("predictions", "encoded"),
    [
        (np.array([1, 0]), b'{"predictions":[1,0]}'),
        (np.array([0.5, 1.25]), b'{"predictions":[0.5,1.25]}'),
        (np.array(["x", "y"], dtype=object), b'{"predictions":["x","y"]}'),
        (np.array([np.nan]), None),
        (np.array([0.1], dtype=np.float32), None),
        ([1, 2], None),
    ],
)
def test_encode(predictions: object, encoded: bytes | None) -> None:
    assert FastPredictor.encode(predictions) == encoded
