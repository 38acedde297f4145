"""Conformance: `mlstack serve` answers like MLflow's own scoring server, payload for payload.

The oracle is `mlflow models serve -m models:/<name>/<version> --env-manager local`, started once
per model for this module. One table of payloads goes to both; status codes, `error_code`s and
predictions must agree. The fast path must have answered the plain numeric payloads (checked
through the `X-Scoring-Path` header), so these tests pin the fast path to MLflow's behaviour.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from .conftest import ALIAS, Registry, ServerProcess, Servers, training_data, wait_ready

pytestmark = pytest.mark.integration

MAX_BODY = 256 * 1024  # our limit in this module, to test 413 cheaply


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    content_type: str = "application/json"
    fast: bool | None = None  # True: the fast path must answer; False: MLflow's path must


def j(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def cases_for(kind: str) -> list[Case]:
    features, _ = training_data(kind)
    columns = list(features.columns)
    one = features.iloc[[7]]
    five = features.iloc[10:15]
    split5 = {"columns": columns, "data": five.values.tolist()}
    records5 = five.to_dict(orient="records")
    first = columns[0]
    cases = [
        Case("split_1", j({"dataframe_split": one.to_dict(orient="split")}), fast=True),
        Case("split_5", j({"dataframe_split": split5}), fast=True),
        Case("split_index", j({"dataframe_split": five.to_dict(orient="split")}), fast=True),
        Case(
            "split_permuted",
            j({"dataframe_split": five[columns[::-1]].to_dict(orient="split")}),
            fast=True,
        ),
        Case("records_5", j({"dataframe_records": records5}), fast=True),
        Case("instances_records", j({"instances": records5}), fast=True),
        Case("inputs_records", j({"inputs": records5}), fast=True),
        Case("inputs_columnar", j({"inputs": five.to_dict(orient="list")}), fast=True),
        Case("instances_columnar", j({"instances": five.to_dict(orient="list")}), fast=True),
        Case(
            "ints_in_double_columns",
            j(
                {
                    "dataframe_split": {
                        "columns": columns,
                        "data": five.round().astype(int).values.tolist(),
                    }
                }
            ),
            fast=True,
        ),
        Case("csv", five.to_csv(index=False).encode(), "text/csv", fast=False),
        Case("json_charset", j({"dataframe_records": records5}), "application/json; charset=utf-8"),
    ]
    if kind != "logreg":
        cases.append(
            Case(
                "missing_column",
                j(
                    {
                        "dataframe_records": [
                            {k: v for k, v in r.items() if k != first} for r in records5
                        ]
                    }
                ),
                fast=False,
            )
        )
        return cases
    row = one.to_dict(orient="records")[0]
    cases += [
        Case("with_params", j({"dataframe_split": split5, "params": {"foo": 1}}), fast=False),
        Case("empty_records", j({"dataframe_records": []}), fast=False),
        Case("empty_split", j({"dataframe_split": {"columns": columns, "data": []}}), fast=False),
        Case("empty_instances", j({"instances": []}), fast=False),
        Case("missing_column", j({"dataframe_records": [{k: v for k, v in row.items() if k != first}]}), fast=False),
        Case("extra_column", j({"dataframe_records": [{**row, "bogus": 1.0}]}), fast=False),
        Case("wrong_columns", j({"dataframe_split": {"columns": [f"x{i}" for i in range(len(columns))], "data": five.values.tolist()}}), fast=False),
        Case("short_rows", j({"dataframe_split": {"columns": columns, "data": [five.values[0][:-1].tolist()]}}), fast=False),
        Case("nan", j({"dataframe_records": [{**row, first: math.nan}]}), fast=False),
        Case("infinity", j({"dataframe_records": [{**row, first: math.inf}]}), fast=False),
        Case("null", j({"dataframe_records": [{**row, first: None}]}), fast=False),
        Case("numeric_string", j({"dataframe_records": [{**row, first: "12.5"}]}), fast=False),
        Case("text_string", j({"dataframe_records": [{**row, first: "abc"}]}), fast=False),
        Case("boolean", j({"dataframe_records": [{**row, first: True}]}), fast=False),
        Case("nested_list", j({"dataframe_records": [{**row, first: [1.0, 2.0]}]}), fast=False),
        Case("unknown_key_alongside", j({"dataframe_split": split5, "foo": 1}), fast=False),
        Case("unknown_key_only", j({"foo": 1}), fast=False),
        Case("two_formats", j({"dataframe_split": split5, "dataframe_records": records5}), fast=False),
        Case("split_is_list", j({"dataframe_split": records5}), fast=False),
        Case("records_is_dict", j({"dataframe_records": row}), fast=False),
        Case("split_extra_key", j({"dataframe_split": {**split5, "extra": 1}}), fast=False),
        Case("instances_lists", j({"instances": five.values.tolist()}), fast=False),
        Case("bad_json", b'{"dataframe_split": {', fast=False),
        Case("top_level_list", j([row]), fast=False),
        Case("top_level_number", b"42", fast=False),
        Case("not_utf8", b'{"dataframe_records": [{"a": "\xff\xfe"}]}', fast=False),
        Case("empty_body", b"", fast=False),
        Case("text_plain", j({"dataframe_records": records5}), "text/plain"),
        Case("latin1_charset", j({"dataframe_records": records5}), "application/json; charset=latin-1"),
        Case("unknown_ct_param", j({"dataframe_records": records5}), "application/json; foo=bar"),
        Case("csv_missing_column", five.drop(columns=[first]).to_csv(index=False).encode(), "text/csv"),
        Case("csv_garbage", b"a,b\n1,2,3,4\n\x00", "text/csv"),
    ]  # fmt: skip
    return cases


def error_code(response: Any) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


def assert_same_answer(case: Case, ours: Any, oracle: Any) -> None:
    context = f"{case.id}: ours {ours.status_code} {ours.text[:300]!r} / mlflow {oracle.status_code} {oracle.text[:300]!r}"
    assert ours.status_code == oracle.status_code, context
    if oracle.status_code == 200:
        expected = np.asarray(oracle.json()["predictions"])
        got = np.asarray(ours.json()["predictions"])
        assert got.shape == expected.shape, context
        if expected.dtype.kind in "fc":
            np.testing.assert_array_equal(got, expected, err_msg=context)
        else:
            assert got.tolist() == expected.tolist(), context
    elif oracle.headers["content-type"].startswith("application/json"):
        assert error_code(ours) == error_code(oracle), context
        assert ours.headers["content-type"].split(";")[0] == "application/json", context
    else:
        # Documented difference: MLflow answers its 415s in plain text, ours in its error JSON
        # (every error of ours is one shape), same status, same message.
        assert ours.headers["content-type"].split(";")[0] == "application/json", context
        assert ours.json() == {"error_code": "BAD_REQUEST", "message": oracle.text}, context
    if case.fast is not None:
        path = ours.headers.get("x-scoring-path")
        assert path == ("fast" if case.fast else "mlflow"), f"{case.id}: answered by {path}"


@dataclass
class Pair:
    name: str
    ours_path: str
    ours: ServerProcess
    oracle: ServerProcess


@pytest.fixture(scope="module")
def deployed(registry: Registry, servers: Servers) -> dict[str, Pair]:
    """logreg (default route), forest and ridge (`/models/<name>/invocations`) on one mlstack
    serve; one stock MLflow server per model as the oracle."""
    names = {kind: registry.name(f"conf_{kind}") for kind in ("logreg", "forest", "ridge")}
    versions = {kind: registry.register(name, kind) for kind, name in names.items()}
    ours = servers.mlstack(
        f"models:/{names['logreg']}@{ALIAS}", extra_env={"MLSTACK_MAX_BODY_BYTES": str(MAX_BODY)}
    )
    wait_ready(ours)
    pairs = {}
    for kind, name in names.items():
        oracle = servers.stock(f"models:/{name}/{versions[kind]}")
        path = "/invocations" if kind == "logreg" else f"/models/{name}/invocations"
        pairs[kind] = Pair(name, path, ours, oracle)
    return pairs


@pytest.mark.parametrize("kind", ["logreg", "forest", "ridge"])
def test_same_answers_as_mlflow(deployed: dict[str, Pair], kind: str) -> None:
    pair = deployed[kind]
    failures = []
    for case in cases_for(kind):
        ours = pair.ours.post(pair.ours_path, case.body, case.content_type)
        oracle = pair.oracle.post("/invocations", case.body, case.content_type)
        try:
            assert_same_answer(case, ours, oracle)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


def test_oversized_body_is_413_with_mlflow_error_json(deployed: dict[str, Pair]) -> None:
    """MLflow's server has no body limit (it scores the payload); ours refuses it with 413."""
    pair = deployed["logreg"]
    features, _ = training_data("logreg")
    big = features.sample(2000, replace=True, random_state=0)
    body = j({"dataframe_split": big.to_dict(orient="split")})
    assert len(body) > MAX_BODY
    ours = pair.ours.post("/invocations", body)
    assert ours.status_code == 413
    assert ours.json()["error_code"] == "RESOURCE_EXHAUSTED"
    assert str(MAX_BODY) in ours.json()["message"]
    oracle = pair.oracle.post("/invocations", body)
    assert oracle.status_code == 200  # no limit there: documented difference
    # A chunked body (no Content-Length) is cut off as it streams in.
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    streamed = pair.ours.post("/invocations", chunks)  # type: ignore[arg-type]
    assert streamed.status_code == 413
    # The server is fine afterwards.
    small = j({"dataframe_split": features.iloc[:2].to_dict(orient="split")})
    assert pair.ours.post("/invocations", small).status_code == 200
