"""The Open Inference Protocol (KServe v2) over HTTP/JSON, on the same models as `/invocations`.

Routes (the app dispatches here):
    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           liveness; readiness (the default model loaded)
    GET  /v2/models/{name}[/versions/{v}]            model metadata, from the model's signature
    GET  /v2/models/{name}[/versions/{v}]/ready      200 once that model answers, 400 before
    POST /v2/models/{name}[/versions/{v}]/infer      inference, JSON tensors

`{name}` is a registered model name: the default model's, or any model holding the discovery alias
(the same ones `/models/<name>/invocations` serves). `{v}` must be a version being served there.

A model with a column signature takes either one tensor per column (named like the column, shape
`[N]` or `[N, 1]`) or one tensor of shape `[N, columns]` holding the columns in signature order.
A tensor signature takes one tensor of the signature's width. Data may be flat (row-major) or
nested. Scikit-learn models with a numeric signature go through the same fast path as
`/invocations` (numpy array -> estimator); other models through the pyfunc's own `predict`, with
MLflow's schema enforcement. The answer holds one output tensor, `predict`. The common request
(one FP tensor `[N, width]` of plain numbers, for a fast-path model) skips the general parser:
`fast_lane_array` checks it in one pass and builds the same array; anything it does not fully
recognise goes through `request_rows`, which names what is wrong.

Errors are the protocol's: HTTP 400 (bad request) or 404 (no such model or version) with
`{"error": "<message>"}`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mlstack.serving.model import Answer, ServedModel

V2_PREFIX = "/v2"
_MODEL_ROUTE = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer)?$"
)

_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
_DATATYPES = _INT_TYPES | _FLOAT_TYPES | {"BOOL", "BYTES"}
_MAX_SAFE = 2**53


class V2Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def v2_error(status: int, message: str) -> Answer:
    return Answer(status, orjson.dumps({"error": message}))


@dataclass(frozen=True)
class V2Route:
    kind: str  # "metadata" | "ready" | "infer"
    name: str
    version: str | None


def parse_model_route(path: str) -> V2Route | None:
    match = _MODEL_ROUTE.match(path)
    if match is None:
        return None
    tail = match["tail"]
    kind = "metadata" if tail is None else tail[1:]
    return V2Route(kind, match["name"], match["version"])


# --- metadata -----------------------------------------------------------------------------------
def _datatype_of_mlflow(type_name: str) -> str:
    return {
        "double": "FP64",
        "float": "FP32",
        "long": "INT64",
        "integer": "INT32",
        "boolean": "BOOL",
        "string": "BYTES",
        "binary": "BYTES",
        "datetime": "BYTES",
    }.get(type_name, "BYTES")


def _datatype_of_numpy(dtype: np.dtype) -> str:
    kind, size = dtype.kind, dtype.itemsize
    if kind == "f":
        return {2: "FP16", 4: "FP32"}.get(size, "FP64")
    if kind == "i":
        return f"INT{size * 8}"
    if kind == "u":
        return f"UINT{size * 8}"
    if kind == "b":
        return "BOOL"
    return "BYTES"


def _tensors(schema: Any, default_name: str) -> list[dict[str, Any]]:
    if schema is None:
        return []
    out = []
    for index, spec in enumerate(schema.inputs):
        name = spec.name or (default_name if index == 0 else f"{default_name}-{index}")
        if schema.is_tensor_spec():
            datatype = _datatype_of_numpy(np.dtype(spec.type))
            shape = list(spec.shape)
        else:
            datatype = _datatype_of_mlflow(str(getattr(spec.type, "name", spec.type)))
            shape = [-1]
        out.append({"name": name, "datatype": datatype, "shape": shape})
    return out


def model_metadata(name: str, versions: list[str], model: ServedModel) -> dict[str, Any]:
    meta = model.pyfunc.metadata
    flavors = sorted(f for f in meta.flavors if f != "python_function")
    outputs = _tensors(meta.get_output_schema(), "predict")
    if len(outputs) == 1:
        outputs[0]["name"] = "predict"
    return {
        "name": name,
        "versions": versions,
        "platform": f"mlflow-{flavors[0]}" if flavors else "mlflow-pyfunc",
        "inputs": _tensors(model.input_schema, "input-0"),
        "outputs": outputs or [{"name": "predict", "datatype": "BYTES", "shape": [-1]}],
    }


# --- inference request -> array ------------------------------------------------------------------
def _flatten(data: Any, out: list[Any]) -> None:
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                if len(stack) > 64:
                    raise V2Error(400, "tensor data nested deeper than any shape")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()


def _tensor_values(tensor: dict[str, Any], index: int) -> tuple[str, list[int], str, list[Any]]:
    if type(tensor) is not dict:
        raise V2Error(400, f"inputs[{index}] must be an object")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if type(name) is not str:
        raise V2Error(400, f"inputs[{index}]: 'name' must be a string")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise V2Error(400, f"input '{name}': 'shape' must be a list of non-negative integers")
    if type(datatype) is not str or datatype not in _DATATYPES:
        raise V2Error(400, f"input '{name}': unknown datatype {datatype!r}")
    if "data" not in tensor:
        raise V2Error(400, f"input '{name}': no 'data' (binary tensor data is not supported)")
    data = tensor["data"]
    flat: list[Any] = []
    if type(data) is not list:
        flat.append(data)
    elif (
        data
        and all(type(row) is list for row in data)
        and not any(type(v) is list for v in data[0])
    ):
        for row in data:  # the common nested form: rows of values
            flat.extend(row)
        if any(type(v) is list for v in flat):
            flat = []
            _flatten(data, flat)
    else:
        _flatten(data, flat)
    expected = math.prod(shape)
    if len(flat) != expected:
        raise V2Error(
            400, f"input '{name}': shape {shape} holds {expected} values, data has {len(flat)}"
        )
    _check_values(name, datatype, flat)
    return name, shape, datatype, flat


_ALLOWED = {"float": frozenset((float, int)), "int": frozenset((int,)), "BOOL": frozenset((bool,))}


def _check_values(name: str, datatype: str, flat: list[Any]) -> None:
    """Every value of the datatype's kind (one pass over the types, then the ranges)."""
    kinds = set(map(type, flat))
    if datatype in _FLOAT_TYPES:
        allowed = _ALLOWED["float"]
    elif datatype in _INT_TYPES:
        allowed = _ALLOWED["int"]
    elif datatype == "BOOL":
        allowed = _ALLOWED["BOOL"]
    else:
        allowed = frozenset((str,))
    ok = kinds <= allowed
    if ok and int in kinds and flat:
        ints = [v for v in flat if type(v) is int]
        low, high = min(ints), max(ints)
        if datatype in _FLOAT_TYPES:
            ok = low > -_MAX_SAFE and high < _MAX_SAFE
        else:
            ok = low >= -(2**63) and high < 2**64
    if not ok:
        bad = next((v for v in flat if type(v) not in allowed), None)
        shown = repr(bad) if bad is not None else "a value out of range"
        raise V2Error(400, f"input '{name}': {shown} is not a {datatype} value")


@dataclass
class Rows:
    """The request's rows in signature order, and whether any column came as integers."""

    columns: list[list[Any]]  # one list per signature column (column-based) or per tensor column
    count: int
    all_ints: list[bool]


def request_rows(payload: Any, model: ServedModel) -> tuple[Rows, list[str] | None]:
    """(rows, the signature's column names or None for a tensor signature)."""
    if type(payload) is not dict:
        raise V2Error(400, "the inference request must be a JSON object")
    inputs = payload.get("inputs")
    if type(inputs) is not list or not inputs:
        raise V2Error(400, "'inputs' must be a non-empty list of tensors")
    if "id" in payload and type(payload["id"]) is not str:
        raise V2Error(400, "'id' must be a string")
    if "parameters" in payload and type(payload["parameters"]) is not dict:
        raise V2Error(400, "'parameters' must be an object")
    outputs = payload.get("outputs")
    if outputs is not None:
        if type(outputs) is not list or not all(
            type(o) is dict and type(o.get("name")) is str for o in outputs
        ):
            raise V2Error(400, "'outputs' must be a list of objects with a 'name'")
        unknown = [o["name"] for o in outputs if o["name"] != "predict"]
        if unknown:
            raise V2Error(400, f"unknown output(s) {unknown}: this model has one, 'predict'")
    tensors = [_tensor_values(t, i) for i, t in enumerate(inputs)]
    schema = model.input_schema
    names: list[str] | None = None
    width: int | None = None
    if schema is not None and not schema.is_tensor_spec():
        names = [str(n) for n in schema.input_names()]
        width = len(names)
    elif schema is not None and len(schema.inputs) == 1:
        shape = schema.inputs[0].shape
        width = shape[1] if len(shape) == 2 and shape[1] > 0 else None
    by_name = {t[0]: t for t in tensors}
    first_name, first_shape = tensors[0][0], tensors[0][1]
    if names is not None and (len(tensors) > 1 or (first_name in names and len(first_shape) == 1)):
        # One tensor per column.
        if len(by_name) != len(tensors):
            raise V2Error(400, "two input tensors have the same name")
        missing = [n for n in names if n not in by_name]
        extra = [n for n in by_name if n not in names]
        if missing or extra:
            raise V2Error(
                400,
                f"one tensor per signature column: missing {missing[:10]}, unknown {extra[:10]}",
            )
        counts = set()
        columns = []
        kinds = []
        for column in names:
            _, shape, datatype, flat = by_name[column]
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise V2Error(400, f"input '{column}': shape must be [N] or [N, 1], got {shape}")
            counts.add(shape[0])
            columns.append(flat)
            kinds.append(datatype in _INT_TYPES)
        if len(counts) != 1:
            raise V2Error(400, "the column tensors have different numbers of rows")
        return Rows(columns, counts.pop(), kinds), names
    if len(tensors) != 1:
        raise V2Error(400, "send one tensor of shape [N, columns], or one tensor per column")
    name, shape, datatype, flat = tensors[0]
    if len(shape) != 2:
        raise V2Error(400, f"input '{name}': shape must be [N, {width or 'columns'}], got {shape}")
    count, columns_in = shape
    if width is not None and columns_in != width:
        raise V2Error(400, f"input '{name}': the model takes {width} columns, got {columns_in}")
    columns = [flat[i::columns_in] for i in range(columns_in)] if columns_in else []
    return Rows(columns, count, [datatype in _INT_TYPES] * columns_in), names


def response_body(name: str, version: str | None, request_id: Any, predictions: Any) -> bytes:
    array = np.asarray(predictions)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        data: Any = [None if not math.isfinite(v) else v for v in array.ravel().tolist()]
    elif array.dtype.kind in "fiub":
        data = array.ravel()
    else:
        data = [str(v) for v in array.ravel().tolist()]
    output = {
        "name": "predict",
        "datatype": _datatype_of_numpy(array.dtype),
        "shape": list(array.shape),
        "data": data,
    }
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": [output]}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def predict_fast(model: ServedModel, rows: Rows) -> Any | None:
    """The fast path's estimator call on the rows, or None when it does not apply."""
    if rows.count == 0:
        raise V2Error(400, "the input tensors hold no rows")
    fast = model.fast
    if fast is None or len(rows.columns) != fast.spec.width:
        return None
    spec = fast.spec
    if not all(rows.all_ints[i] for i in spec.long_columns):
        return None  # floats for a `long` column: MLflow's schema enforcement decides
    try:
        array = np.array(rows.columns, dtype=spec.dtype).T  # column-major, like a DataFrame
    except (OverflowError, ValueError, TypeError) as exc:
        raise V2Error(400, f"input values do not fit the model's types: {exc}") from exc
    if spec.order == "C":
        array = np.ascontiguousarray(array)
    try:
        return fast.predict_array(array)
    except Exception:  # the pyfunc path reproduces (and reports) any failure
        return None


_LANE_KEYS = frozenset(("inputs", "id", "parameters"))
_NUMBERS = frozenset((float, int))


def fast_lane_array(payload: Any, model: ServedModel) -> np.ndarray | None:
    """The common request, one FP tensor `[N, width]` of plain numbers for a fast-path model,
    straight to the fast path's array; None for anything else (`request_rows` then parses it
    and names what is wrong). Same values and layout as `request_rows` + `predict_fast`."""
    fast = model.fast
    if fast is None or type(payload) is not dict or not _LANE_KEYS.issuperset(payload):
        return None
    spec = fast.spec
    inputs = payload.get("inputs")
    if spec.long_columns or type(inputs) is not list or len(inputs) != 1:
        return None
    if ("id" in payload and type(payload["id"]) is not str) or (
        "parameters" in payload and type(payload["parameters"]) is not dict
    ):
        return None
    tensor = inputs[0]
    if type(tensor) is not dict or type(tensor.get("name")) is not str:
        return None
    shape, data, datatype = tensor.get("shape"), tensor.get("data"), tensor.get("datatype")
    if type(shape) is not list or len(shape) != 2 or type(datatype) is not str:
        return None
    if datatype not in _FLOAT_TYPES:
        return None
    count, width = shape
    if type(count) is not int or count < 1 or width != spec.width or type(width) is not int:
        return None
    if type(data) is not list or not data:
        return None
    if type(data[0]) is list:  # rows
        if len(data) != count:
            return None
        for row in data:
            if type(row) is not list or len(row) != width:
                return None
        kinds = {type(v) for row in data for v in row}
    else:  # flat, row-major
        if len(data) != count * width:
            return None
        kinds = set(map(type, data))
    if not kinds <= _NUMBERS:
        return None  # bools, strings, nulls, deeper nesting: the general parser decides
    try:
        array = np.array(data, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        return None
    if int in kinds and np.abs(array).max() >= _MAX_SAFE:
        return None  # an integer a float64 cannot hold: the general parser refuses it
    if array.ndim == 1:
        array = array.reshape(count, width)
    return np.asfortranarray(array) if spec.order == "F" else array


def predict_pyfunc(model: ServedModel, rows: Rows, names: list[str] | None) -> Any:
    """The pyfunc's own `predict`, with MLflow's schema enforcement (blocking: a worker thread)."""
    if rows.count == 0:
        raise V2Error(400, "the input tensors hold no rows")
    from mlflow.exceptions import MlflowException

    try:
        if names is not None:
            import pandas as pd

            data: Any = pd.DataFrame(dict(zip(names, rows.columns, strict=True)))
        else:
            data = np.array(rows.columns).T
        return model.pyfunc.predict(data)
    except MlflowException as exc:
        raise V2Error(400, exc.message) from exc
    except Exception as exc:  # what MLflow's scoring server also reports as the client's (400)
        raise V2Error(
            400, f"the model could not predict these inputs: {type(exc).__name__}: {exc}"
        ) from exc


def infer_sync(name: str, model: ServedModel, body: bytes) -> Answer:
    """A whole inference on the calling thread (shadow copies and canary re-checks)."""
    try:
        payload = orjson.loads(body)
        rows, names = request_rows(payload, model)
        predictions = predict_fast(model, rows) if model.fast is not None else None
        if predictions is None:
            predictions = predict_pyfunc(model, rows, names)
    except orjson.JSONDecodeError as exc:
        return v2_error(400, f"The request body is not JSON: {exc}")
    except V2Error as exc:
        return v2_error(exc.status, exc.message)
    return Answer(200, response_body(name, model.version, payload.get("id"), predictions))
