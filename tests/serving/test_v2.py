"""The Open Inference Protocol (KServe v2) routes of `mlstack serve`, on a real server over HTTP.

Conformance cases follow the protocol's own request and response shapes (health, server and model
metadata, model readiness, inference with `id`, flat and nested row-major `data`, one tensor per
column, `/versions/{v}/infer`, the `{"error": ...}` answers), and the protocol's example request
(`input0` UINT32 [2, 2] and `input1` BOOL [3]) sent to a model that does not take it. The
predictions must equal the `/invocations` answer for the same rows. Then Triton's own v2 client
library (`tritonclient[http]`) speaks to the same server, and Hypothesis fuzzes `/infer`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from .conftest import ALIAS, Registry, ServerProcess, Servers, training_data, wait_ready
from .test_fuzz import FUZZ, json_values, numbers

pytestmark = pytest.mark.integration


class Deployed:
    def __init__(self, server: ServerProcess, names: dict[str, str], versions: dict[str, str]):
        self.server, self.names, self.versions = server, names, versions

    def get(self, path: str) -> requests.Response:
        return requests.get(self.server.url + path, timeout=30)

    def infer(self, kind: str, payload: Any, version: str | None = None) -> requests.Response:
        name = self.names[kind]
        at = f"/versions/{version}" if version else ""
        url = f"{self.server.url}/v2/models/{name}{at}/infer"
        data = payload if isinstance(payload, bytes) else json.dumps(payload)
        return requests.post(
            url, data=data, headers={"Content-Type": "application/json"}, timeout=30
        )

    def invocations(self, kind: str, rows: Any, columns: list[str]) -> list[Any]:
        path = "/invocations" if kind == "logreg" else f"/models/{self.names[kind]}/invocations"
        body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}})
        answer = self.server.post(path, body)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["predictions"])


@pytest.fixture(scope="module")
def deployed(registry: Registry, servers: Servers) -> Deployed:
    """logreg as the default model, ridge and forest as other models holding the alias."""
    names = {kind: registry.name(f"v2_{kind}") for kind in ("logreg", "ridge", "forest")}
    versions = {kind: registry.register(name, kind) for kind, name in names.items()}
    server = servers.mlstack(f"models:/{names['logreg']}@{ALIAS}")
    wait_ready(server)
    return Deployed(server, names, versions)


def rows_of(kind: str, start: int = 0, count: int = 3) -> tuple[list[str], list[list[float]]]:
    features, _ = training_data(kind)
    frame = features.iloc[start : start + count]
    return list(frame.columns), frame.values.tolist()


def assert_error(answer: requests.Response, status: int, fragment: str = "") -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert fragment in body["error"], body


# --- health and metadata ---------------------------------------------------------------------------
def test_health_and_server_metadata(deployed: Deployed) -> None:
    live = deployed.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = deployed.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    meta = deployed.get("/v2").json()
    assert meta["name"] == "mlstack" and meta["version"] and meta["extensions"] == []


@pytest.mark.parametrize("kind", ["logreg", "ridge"])
def test_model_metadata_comes_from_the_signature(deployed: Deployed, kind: str) -> None:
    name, version = deployed.names[kind], deployed.versions[kind]
    columns, _ = rows_of(kind)
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/{version}"):
        meta = deployed.get(path)
        assert meta.status_code == 200, meta.text
        body = meta.json()
        assert body["name"] == name and body["versions"] == [version]
        assert body["platform"] == "mlflow-sklearn"
        assert [t["name"] for t in body["inputs"]] == columns
        assert {t["datatype"] for t in body["inputs"]} == {"FP64"}
        assert all(t["shape"] == [-1] for t in body["inputs"])
        assert [t["name"] for t in body["outputs"]] == ["predict"]
    ready = deployed.get(f"/v2/models/{name}/ready")
    assert ready.status_code == 200 and ready.json() == {"name": name, "ready": True}


def test_unknown_models_and_versions_are_404(deployed: Deployed) -> None:
    assert_error(deployed.get("/v2/models/no_such_model"), 404, "no_such_model")
    assert_error(deployed.get("/v2/models/no_such_model/ready"), 404)
    name = deployed.names["logreg"]
    assert_error(deployed.get(f"/v2/models/{name}/versions/999"), 404, "999")
    columns, rows = rows_of("logreg")
    payload = {
        "inputs": [
            {"name": "input-0", "shape": [3, len(columns)], "datatype": "FP64", "data": rows}
        ]
    }
    assert_error(deployed.infer("logreg", payload, version="999"), 404, "not served")


# --- inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["logreg", "ridge", "forest"])
def test_infer_answers_like_invocations(deployed: Deployed, kind: str) -> None:
    columns, rows = rows_of(kind, start=5, count=4)
    expected = deployed.invocations(kind, rows, columns)
    width = len(columns)
    flat = [v for row in rows for v in row]
    by_column = [
        {"name": c, "shape": [4], "datatype": "FP64", "data": [row[i] for row in rows]}
        for i, c in enumerate(columns)
    ]
    payloads = {
        "nested": {"id": "42", "inputs": [{"name": "input-0", "shape": [4, width], "datatype": "FP64", "data": rows}]},
        "flat": {"id": "42", "inputs": [{"name": "input-0", "shape": [4, width], "datatype": "FP64", "data": flat}]},
        "per_column": {"id": "42", "inputs": by_column},
        "outputs_named": {"id": "42", "inputs": by_column, "outputs": [{"name": "predict"}]},
    }  # fmt: skip
    for label, payload in payloads.items():
        for version in (None, deployed.versions[kind]):
            answer = deployed.infer(kind, payload, version)
            assert answer.status_code == 200, f"{label}: {answer.text}"
            body = answer.json()
            assert body["model_name"] == deployed.names[kind], label
            assert body["model_version"] == deployed.versions[kind], label
            assert body["id"] == "42", label
            (output,) = body["outputs"]
            assert output["name"] == "predict" and output["shape"] == [4], label
            assert output["datatype"] == ("FP64" if kind == "ridge" else "INT64"), label
            np.testing.assert_array_equal(output["data"], expected, err_msg=label)
            assert answer.headers["x-model-version"] == deployed.versions[kind]
            assert answer.headers["x-scoring-path"] == "fast", label  # the same fast path


def test_the_protocols_own_example_request_is_a_400_here(deployed: Deployed) -> None:
    """The specification's inference request example, sent to a model that takes 30 columns."""
    example = {
        "id": "42",
        "inputs": [
            {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
            {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True]},
        ],
        "outputs": [{"name": "output0"}],
    }
    assert_error(deployed.infer("logreg", example), 400)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b'{"inputs": [', "not JSON"),
        (b"[]", "JSON object"),
        ({}, "'inputs'"),
        ({"inputs": []}, "'inputs'"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64"}]}, "no 'data'"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FLOAT", "data": [0.0] * 30}]}, "unknown datatype"),
        # Found by the fuzzer: a datatype that is a list was a 500 (unhashable in a set lookup).
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": ["FP64"], "data": [0.0] * 30}]}, "unknown datatype"),
        ({"inputs": [{"name": "x", "shape": [2, 30], "datatype": "FP64", "data": [0.0] * 30}]}, "holds 60 values"),
        ({"inputs": [{"name": "x", "shape": [1, 29], "datatype": "FP64", "data": [0.0] * 29}]}, "30 columns"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": ["a"] * 30}]}, "not a FP64"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "INT64", "data": [0.5] * 30}]}, "not a INT64"),
        ({"inputs": [{"name": "x", "shape": [0, 30], "datatype": "FP64", "data": []}]}, "no rows"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.0] * 30}], "outputs": [{"name": "proba"}]}, "unknown output"),
        ({"id": 7, "inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0.0] * 30}]}, "'id'"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_protocols_error(
    deployed: Deployed, payload: Any, fragment: str
) -> None:
    assert_error(deployed.infer("logreg", payload), 400, fragment)


def test_infer_is_counted_in_metrics(deployed: Deployed) -> None:
    text = deployed.get("/metrics").text
    name = deployed.names["ridge"]
    wanted = ('route="/v2/models/{name}/infer"', f'model="{name}"', 'status="200"')
    lines = [x for x in text.splitlines() if x.startswith("mlstack_serving_requests_total")]
    assert any(all(w in x for w in wanted) for x in lines), lines


# --- a real v2 client ----------------------------------------------------------------------------
def test_tritons_v2_client_library(deployed: Deployed) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{deployed.server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        name, version = deployed.names["forest"], deployed.versions["forest"]
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["name"] == name and meta["versions"] == [version]
        columns, rows = rows_of("forest", start=20, count=6)
        tensor = httpclient.InferInput("input-0", [6, len(columns)], "FP64")
        tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float64), binary_data=False)
        wanted = httpclient.InferRequestedOutput("predict", binary_data=False)
        result = client.infer(
            name, [tensor], model_version=version, outputs=[wanted], request_id="r1"
        )
        assert result.get_response()["id"] == "r1"
        got = result.as_numpy("predict")
        assert got.tolist() == deployed.invocations("forest", rows, columns)
        with pytest.raises(Exception, match="not served"):
            client.infer(name, [tensor], model_version="999")
    finally:
        client.close()


# --- fuzzing -------------------------------------------------------------------------------------
DATATYPES = ["FP64", "FP32", "INT64", "INT32", "UINT8", "BOOL", "BYTES", "FP16", "STRING", ""]


@st.composite
def v2_requests(draw: st.DrawFn) -> Any:
    tensor = st.fixed_dictionaries(
        {
            "name": st.sampled_from(["input-0", "x", "mean radius"]) | st.text(max_size=5) | numbers,
            "shape": st.lists(st.integers(min_value=-2, max_value=40) | numbers, max_size=3) | json_values,
            "datatype": st.sampled_from(DATATYPES) | json_values,
            "data": st.lists(numbers | st.booleans() | st.text(max_size=3), max_size=70) | json_values,
        },
        optional={"parameters": json_values},
    )  # fmt: skip
    body = draw(
        st.fixed_dictionaries(
            {"inputs": st.lists(tensor, max_size=3) | json_values},
            optional={"id": json_values, "outputs": json_values, "parameters": json_values},
        )
        | json_values
    )
    return json.dumps(body, allow_nan=True).encode()


@pytest.mark.timeout(600)
def test_fuzz_infer(deployed: Deployed) -> None:
    session = requests.Session()
    name = deployed.names["logreg"]
    url = f"{deployed.server.url}/v2/models/{name}/infer"

    @FUZZ
    @given(body=v2_requests())
    def run(body: bytes) -> None:
        answer = session.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
        assert answer.status_code < 500, f"{body[:300]!r}: {answer.status_code} {answer.text[:300]}"
        if answer.status_code >= 400:
            assert isinstance(answer.json().get("error"), str), answer.text

    run()
    assert deployed.get("/v2/health/ready").status_code == 200
