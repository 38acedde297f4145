"""The fast path: JSON body -> numpy array in signature order -> the scikit-learn estimator.

MLflow's scoring path decodes the body twice, builds a DataFrame, casts and enforces the schema,
and lets scikit-learn validate the DataFrame again. For the common case (a scikit-learn model whose
signature is all numeric columns, or one numeric tensor, and a payload of plain numbers) all of
that reduces to `estimator.predict(np.array(rows))`: same values, same order, same estimator.

The fast path only answers when it is sure. `FastPredictor.try_predict` returns None for anything
it does not fully recognise (a payload format detail, a non-number, a missing or extra column,
`params`, a non-finite value, an exotic output type, any exception), and the caller then runs
MLflow's own scoring code, which is the reference behaviour. A predictor is only built for a model
after a self-check on the model's input example agrees with MLflow's answer (see `loader.py`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

_logger = logging.getLogger(__name__)

# Predictions are computed from a numpy array in the estimator's own column order, which
# scikit-learn accepts but warns about when it was fitted on a DataFrame.
warnings.filterwarnings("ignore", message="X does not have valid feature names")

_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_SPLIT_KEYS = frozenset(("columns", "data", "index"))
# Integers beyond this lose precision as float64; leave them to MLflow's path.
_MAX_SAFE_INT = 2**53
_NUMBERS = frozenset((int, float))
# orjson serialises these numpy dtypes exactly as `ndarray.tolist()` + json would.
_NATIVE_OUTPUT_DTYPES = frozenset(
    (np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.bool_))
)
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class FastSpec:
    """What a request must look like for the fast path to answer it."""

    columns: tuple[str, ...] | None  # named numeric columns, in signature order
    long_columns: frozenset[int]  # indexes of `long` columns: integers only
    width: int  # number of features
    dtype: np.dtype[Any]  # the dtype MLflow's path would hand to the estimator
    # The memory layout too: MLflow hands a DataFrame, which numpy sees column-major ("F"); BLAS
    # sums in a different order for C and F arrays, so the layout decides the last bits of
    # floating-point predictions (e.g. Ridge). Tensor inputs arrive as C arrays.
    order: Literal["C", "F"] = "F"


def fast_spec_for(pyfunc_model: Any) -> tuple[FastSpec | None, str]:
    """The fast-path spec for a loaded pyfunc model, or (None, reason it does not apply)."""
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec, TensorSpec

    if pyfunc_model.loader_module != "mlflow.sklearn":
        return None, f"flavor {pyfunc_model.loader_module} is not scikit-learn"
    meta = pyfunc_model.metadata
    if getattr(meta, "_is_signature_from_type_hint", lambda: False)():
        return None, "signature comes from type hints"
    schema = meta.get_input_schema()
    if schema is None:
        return None, "model has no signature"
    inputs = schema.inputs
    if not inputs:
        return None, "empty signature"
    if schema.is_tensor_spec():
        if len(inputs) != 1 or not isinstance(inputs[0], TensorSpec) or inputs[0].name:
            return None, "tensor signature is not a single unnamed tensor"
        spec = inputs[0]
        shape = tuple(spec.shape)
        if spec.type != np.dtype(np.float64) or len(shape) != 2 or shape[0] != -1:
            return None, f"tensor {spec.type} {shape} is not float64 (-1, n)"
        if shape[1] < 1:
            return None, "tensor has no fixed width"
        return FastSpec(None, frozenset(), shape[1], np.dtype(np.float64), "C"), "tensor float64"
    names: list[str] = []
    longs: set[int] = set()
    for index, col in enumerate(inputs):
        if not isinstance(col, ColSpec) or col.name is None or not col.required:
            return None, "signature has unnamed or optional columns"
        if col.type == DataType.long:
            longs.add(index)
        elif col.type != DataType.double:
            return None, f"column {col.name!r} is {col.type}, not double/long"
        names.append(col.name)
    if len(set(names)) != len(names):
        return None, "duplicate column names"
    estimator = pyfunc_model.get_raw_model()
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None and [str(n) for n in fitted] != names:
        return None, "estimator's feature names differ from the signature's"
    dtype = np.dtype(np.int64) if len(longs) == len(names) else np.dtype(np.float64)
    return FastSpec(tuple(names), frozenset(longs), len(names), dtype), "numeric columns"


def prepare_fast_path_thread() -> None:
    """Call on the thread that runs the fast path (the event loop's): scikit-learn's finiteness
    check is redundant there (`_array` refuses non-finite values) and costs ~40 us per call.
    scikit-learn's config is thread-local, so MLflow's path (on worker threads) keeps it."""
    import sklearn

    sklearn.set_config(assume_finite=True)


def compiled_forest_predict(estimator: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """`predict` of a fitted random forest / extra-trees model, minus joblib's per-tree overhead.

    scikit-learn's forest `predict` spends most of a small request dispatching one joblib task per
    tree. This does the same arithmetic in the same order with the same primitives: X cast to
    float32 once, each tree's own Cython `tree_.apply` for the leaves, the leaf values
    (`tree_.value`, what `tree_.predict` returns) added tree by tree into a float64 zero array,
    divided by the number of trees, then `classes_.take(argmax)` for classifiers. Single-output
    models only; anything else returns None (the estimator's own `predict` is used).
    """
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    kind = type(estimator)
    if kind not in (
        RandomForestClassifier,
        ExtraTreesClassifier,
        RandomForestRegressor,
        ExtraTreesRegressor,
    ):
        return None
    if getattr(estimator, "n_outputs_", None) != 1 or not estimator.estimators_:
        return None
    trees = [tree.tree_ for tree in estimator.estimators_]
    count = len(trees)
    if kind in (RandomForestClassifier, ExtraTreesClassifier):
        n_classes = int(estimator.n_classes_)
        classes = estimator.classes_
        tables = [np.ascontiguousarray(tree.value[:, 0, :n_classes]) for tree in trees]

        def predict_classes(array: np.ndarray) -> np.ndarray:
            x32 = np.asarray(array, dtype=np.float32)
            proba = np.zeros((x32.shape[0], n_classes), dtype=np.float64)
            for tree, table in zip(trees, tables, strict=True):
                proba += table[tree.apply(x32)]
            proba /= count
            return classes.take(np.argmax(proba, axis=1), axis=0)

        return predict_classes
    values = [np.ascontiguousarray(tree.value[:, 0, 0]) for tree in trees]

    def predict_values(array: np.ndarray) -> np.ndarray:
        x32 = np.asarray(array, dtype=np.float32)
        y_hat = np.zeros(x32.shape[0], dtype=np.float64)
        for tree, table in zip(trees, values, strict=True):
            y_hat += table[tree.apply(x32)]
        y_hat /= count
        return y_hat

    return predict_values


class FastPredictor:
    """Answers plain numeric JSON payloads without MLflow's DataFrame path."""

    def __init__(self, spec: FastSpec, predict: Callable[[np.ndarray], Any]) -> None:
        self.spec = spec
        self._predict = predict
        self._index = {name: i for i, name in enumerate(spec.columns or ())}

    @classmethod
    def for_model(cls, pyfunc_model: Any) -> tuple[FastPredictor | None, str]:
        spec, reason = fast_spec_for(pyfunc_model)
        if spec is None:
            return None, reason
        estimator = pyfunc_model.get_raw_model()
        conf = pyfunc_model.metadata.flavors.get("python_function", {})
        fn_name = str(conf.get("predict_fn", "predict"))
        predict_fn = getattr(estimator, fn_name, None)
        if predict_fn is None:
            return None, "estimator lacks the pyfunc predict function"
        if fn_name == "predict" and (forest := compiled_forest_predict(estimator)) is not None:
            return cls(spec, forest), f"{reason}, forest without joblib"
        return cls(spec, predict_fn), reason

    # --- request -> rows ------------------------------------------------------------------
    def _rows(self, payload: Any) -> list[list[Any]] | None:
        if type(payload) is not dict or len(payload) != 1:
            return None  # params, unknown keys, several formats: MLflow decides
        ((key, value),) = payload.items()
        if key not in _FORMATS:
            return None
        if self.spec.columns is None:  # tensor
            if key in ("instances", "inputs") and type(value) is list:
                return value
            return None
        if key == "dataframe_split":
            return self._split_rows(value)
        if type(value) is list:
            return self._record_rows(value)  # dataframe_records, instances, inputs
        if type(value) is dict and key in ("instances", "inputs"):
            return self._columnar_rows(value)
        return None

    def _split_rows(self, value: Any) -> list[list[Any]] | None:
        if type(value) is not dict or not _SPLIT_KEYS.issuperset(value):
            return None
        columns, data = value.get("columns"), value.get("data")
        if type(columns) is not list or type(data) is not list or not data:
            return None
        index = value.get("index")
        if index is not None and (type(index) is not list or len(index) != len(data)):
            return None
        if index is not None and not all(type(i) in (int, str) for i in index):
            return None
        names = self.spec.columns
        assert names is not None
        if columns == list(names):
            return data
        if len(columns) != len(names) or set(columns) != set(names):
            return None
        order = [columns.index(name) for name in names]
        width = len(order)
        rows = []
        for row in data:
            if type(row) is not list or len(row) != width:
                return None
            rows.append([row[i] for i in order])
        return rows

    def _record_rows(self, records: list[Any]) -> list[list[Any]] | None:
        names = self.spec.columns
        assert names is not None
        if not records:
            return None
        width = len(names)
        rows = []
        for record in records:
            if type(record) is not dict or len(record) != width:
                return None
            try:
                rows.append([record[name] for name in names])
            except (KeyError, TypeError):
                return None
        return rows

    def _columnar_rows(self, columns: dict[str, Any]) -> list[list[Any]] | None:
        names = self.spec.columns
        assert names is not None
        if len(columns) != len(names) or set(columns) != set(names):
            return None
        values = [columns[name] for name in names]
        if not all(type(v) is list for v in values):
            return None
        length = len(values[0])
        if length == 0 or any(len(v) != length for v in values):
            return None
        return [list(row) for row in zip(*values, strict=True)]

    # --- rows -> array -> predictions --------------------------------------------------------
    def _array(self, rows: Sequence[Any]) -> np.ndarray | None:
        width = self.spec.width
        if not rows:
            return None
        for row in rows:
            if type(row) is not list or len(row) != width:
                return None
        types = {type(v) for row in rows for v in row}
        if not types <= _NUMBERS:
            return None  # strings, booleans, nulls, nested values
        longs = self.spec.long_columns
        if longs and not all(type(row[i]) is int for row in rows for i in longs):
            return None  # MLflow refuses or truncates floats in long columns: let it decide
        try:
            array = np.array(rows, dtype=self.spec.dtype, order=self.spec.order)
        except (OverflowError, ValueError, TypeError):
            return None
        if array.dtype.kind == "f":
            if not np.isfinite(array).all():
                return None
            if int in types and np.abs(array).max() >= _MAX_SAFE_INT:
                return None
        return array

    def predict_array(self, array: np.ndarray) -> Any:
        """The estimator on an array already in signature order (the v2 protocol's path)."""
        return self._predict(array)

    def try_predict(self, body: bytes) -> bytes | None:
        """The JSON answer for `body`, or None when MLflow's path must answer instead."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None  # NaN literals, bad JSON, non-UTF-8: MLflow's parser decides
        try:
            rows = self._rows(payload)
            if rows is None:
                return None
            array = self._array(rows)
            if array is None:
                return None
            predictions = self._predict(array)
            return self.encode(predictions)
        except Exception:  # the reference path reproduces (and reports) any failure
            _logger.debug("fast path declined after an exception", exc_info=True)
            return None

    @staticmethod
    def encode(predictions: Any) -> bytes | None:
        if not isinstance(predictions, np.ndarray):
            return None
        if predictions.dtype in _NATIVE_OUTPUT_DTYPES:
            if predictions.dtype.kind == "f" and not np.isfinite(predictions).all():
                return None  # json writes NaN, orjson null: let MLflow's encoder write it
            return orjson.dumps({"predictions": predictions}, option=_JSON_OPTS)
        if predictions.dtype.kind in "fc":
            return None
        try:
            return orjson.dumps({"predictions": predictions.tolist()})
        except TypeError:
            return None
