"""mlstack/run_writes.py's reading of a log-batch request against MLflow's own: whatever
`parse_batch` takes must come out exactly as protobuf's parser and `from_proto` give it to MLflow's
handler (the entities its store receives); what it leaves is MLflow's handler's to parse."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Param, RunTag
from mlflow.protos.service_pb2 import LogBatch
from mlflow.utils.proto_json_utils import parse_dict

from mlstack.run_writes import parse_batch


def mlflows(body: dict[str, Any]) -> tuple[str, list[Any], list[Any], list[Any]]:
    message = LogBatch()
    parse_dict(body, message)
    return (message.run_id, [Metric.from_proto(m) for m in message.metrics],
            [Param.from_proto(p) for p in message.params],
            [RunTag.from_proto(t) for t in message.tags])  # fmt: skip


def comparable(batch: tuple[str, list[Any], list[Any], list[Any]]) -> Any:
    run_id, metrics, params, tags = batch

    def value(v: float) -> Any:
        return "nan" if math.isnan(v) else (v, math.copysign(1, v), type(v))

    return (run_id,
            [(m.key, value(m.value), m.timestamp, m.step, m.model_id, m.dataset_name,
              m.dataset_digest, m.run_id) for m in metrics],
            [(p.key, p.value) for p in params], [(t.key, t.value) for t in tags])  # fmt: skip


def test_the_shape_clients_send_is_read_as_mlflow_reads_it() -> None:
    body = {
        "run_id": "a" * 32,
        "metrics": [
            {"key": "loss", "value": 0.5, "timestamp": 1_700_000_000_000, "step": 3},
            {"key": "int", "value": 2, "timestamp": 5},  # step absent: 0
            {"key": "nan", "value": "NaN", "timestamp": 5, "step": 0},
            {"key": "inf", "value": "-Infinity", "timestamp": 5, "step": -1},
            {"key": "big", "value": 1e308, "timestamp": 0, "step": 2**63 - 1},
            {"key": "neg", "value": -0.0, "timestamp": -5, "step": 0},
        ],
        "params": [{"key": "p", "value": ""}, {"key": "q", "value": "é"}],
        "tags": [{"key": "t", "value": "x\ny"}],
    }
    ours = parse_batch(body)
    assert ours is not None
    assert comparable(ours) == comparable(mlflows(body))


def test_other_shapes_are_left_to_mlflows_handler() -> None:
    run = "a" * 32
    metric = {"key": "m", "value": 1.0, "timestamp": 1, "step": 0}
    for body in (
        {"run_id": run, "metrics": [{**metric, "value": "1.5"}]},  # a number in a string
        {"run_id": run, "metrics": [{**metric, "timestamp": "1"}]},
        {"run_id": run, "metrics": [{**metric, "value": True}]},
        {"run_id": run, "metrics": [{**metric, "value": None}]},
        {"run_id": run, "metrics": [{**metric, "value": math.nan}]},  # protobuf refuses bare NaN
        {"run_id": run, "metrics": [{**metric, "value": math.inf}]},
        {"run_id": run, "metrics": [{**metric, "value": 2**60}]},  # not exact in a double
        {"run_id": run, "metrics": [{**metric, "timestamp": 2**63}]},
        {"run_id": run, "metrics": [{**metric, "step": 1.0}]},
        {"run_id": run, "metrics": [{**metric, "model_id": "m-1"}]},
        {"run_id": run, "metrics": [{k: v for k, v in metric.items() if k != "timestamp"}]},
        {"run_id": run, "metrics": [{**metric, "key": ""}]},
        {"run_id": run, "metrics": None},
        {"run_id": run, "params": [{"key": "p"}]},
        {"run_id": run, "tags": [{"key": "t", "value": 1}]},
        {"run_id": run, "runId": run},
        {"run_uuid": run},
        {"run_id": ""},
        {"run_id": 5},
        [],
        "text",
    ):
        assert parse_batch(body) is None, body


json_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["NaN", "Infinity", "-Infinity", "1.5", "", "k"]),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
items = st.dictionaries(st.sampled_from(["key", "value", "timestamp", "step", "model_id"]),
                        json_values, max_size=5)  # fmt: skip
bodies = st.dictionaries(
    st.sampled_from(["run_id", "metrics", "params", "tags"]),
    st.one_of(json_values, st.lists(items, max_size=3)),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_whatever_it_takes_is_what_mlflow_would_read(body: dict[str, Any]) -> None:
    ours = parse_batch(body)
    if ours is not None:
        assert comparable(ours) == comparable(mlflows(body))


numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                    st.integers(min_value=-(2**53), max_value=2**53),
                    st.sampled_from(["NaN", "Infinity", "-Infinity"]))  # fmt: skip
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
plain_metrics = st.fixed_dictionaries(
    {"key": st.text(min_size=1, max_size=8), "value": numbers, "timestamp": int64s},
    optional={"step": int64s},
)
plain_pairs = st.fixed_dictionaries({"key": st.text(min_size=1, max_size=8), "value": st.text()})
plain_bodies = st.fixed_dictionaries(
    {"run_id": st.text(min_size=1, max_size=40)},
    optional={"metrics": st.lists(plain_metrics, max_size=5),
              "params": st.lists(plain_pairs, max_size=3),
              "tags": st.lists(plain_pairs, max_size=3)},
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(plain_bodies)
def test_every_plain_batch_is_taken_and_read_as_mlflow_reads_it(body: dict[str, Any]) -> None:
    ours = parse_batch(body)
    assert ours is not None
    assert comparable(ours) == comparable(mlflows(body))
