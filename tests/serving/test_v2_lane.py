"""Service-free check of the v2 fast lane: for every request it takes, it builds exactly the array
(values, dtype, memory layout) the general parser and `predict_fast` build; every request it
declines, the general parser answers (or refuses with the protocol's error). Hypothesis draws the
requests, valid and nearly valid."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlstack.serving import v2
from mlstack.serving.fastpath import FastPredictor, FastSpec
from mlstack.serving.model import ServedModel

pytestmark = pytest.mark.unit

WIDTH = 3


def model_with(order: str) -> ServedModel:
    """A served model whose estimator returns its input: what the estimator gets is the answer."""
    spec = FastSpec(None, frozenset(), WIDTH, np.dtype(np.float64), order)  # type: ignore[arg-type]
    return ServedModel(
        uri="models:/lane/1", name="lane", version="1", pyfunc=None, input_schema=None,
        fast=FastPredictor(spec, lambda array: array), fast_reason="test", load_seconds=0.0,
    )  # fmt: skip


numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60)
values = numbers | st.booleans() | st.none() | st.text(max_size=2)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 4))
    width = draw(st.sampled_from([WIDTH, WIDTH, WIDTH, 2]))
    cell = numbers if draw(st.booleans()) else values
    rows = [[draw(cell) for _ in range(width)] for _ in range(count)]
    data: Any = rows if draw(st.booleans()) else [v for row in rows for v in row]
    tensor = {
        "name": draw(st.sampled_from(["input-0", "x"])),
        "shape": draw(st.sampled_from([[count, width], [count, WIDTH], [count * width]])),
        # A list: unhashable, the fuzzer's find of a 500 in the general parser (and in the lane).
        "datatype": draw(st.sampled_from(["FP64", "FP32", "FP16", "INT64", "BOOL", ["FP64"]])),
        "data": data,
    }
    payload: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        payload["id"] = draw(st.sampled_from(["r1", 7]))
    if draw(st.booleans()):
        payload["outputs"] = [{"name": "predict"}]
    return payload


def general(payload: Any, model: ServedModel) -> np.ndarray | str:
    try:
        rows, _ = v2.request_rows(payload, model)
        answer = v2.predict_fast(model, rows)
    except v2.V2Error as exc:
        return exc.message
    return "the fast path declines: the pyfunc answers" if answer is None else answer


@pytest.mark.parametrize("order", ["C", "F"])
@settings(max_examples=150, deadline=None, database=None)
@given(payload=requests())
def test_the_lane_builds_what_the_general_path_builds(order: str, payload: dict[str, Any]) -> None:
    model = model_with(order)
    lane = v2.fast_lane_array(payload, model)
    reference = general(payload, model)
    if lane is None:
        return  # declined: the general path answers it, whatever it is
    assert isinstance(reference, np.ndarray), reference  # the lane never takes a bad request
    assert lane.dtype == reference.dtype and lane.shape == reference.shape
    assert lane.flags.f_contiguous == reference.flags.f_contiguous
    assert lane.flags.c_contiguous == reference.flags.c_contiguous
    np.testing.assert_array_equal(lane, reference)


def test_the_common_request_takes_the_lane() -> None:
    model = model_with("F")
    rows = [[1.0, 2, 3.5], [4.0, 5.0, 6.0]]
    for data in (rows, [v for row in rows for v in row]):
        payload = {
            "id": "a",
            "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": data}],
        }
        array = v2.fast_lane_array(payload, model)
        assert array is not None and array.flags.f_contiguous
        np.testing.assert_array_equal(array, np.array(rows))
