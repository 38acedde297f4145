"""A loaded model and the two ways it answers: the fast path and MLflow's own scoring code."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlstack.serving.fastpath import FastPredictor

_logger = logging.getLogger(__name__)

JSON = "application/json"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON


def error_answer(status: int, error_code: str, message: str) -> Answer:
    """An error in MLflow's JSON shape (`error_code`, `message`)."""
    import orjson

    return Answer(status, orjson.dumps({"error_code": error_code, "message": message}))


@dataclass(eq=False)
class ServedModel:
    """One loaded model version. Immutable once built; requests hold a reference for their life,
    so swapping the slot's reference never mixes two versions inside one request."""

    uri: str  # the concrete URI loaded, e.g. models:/name/3
    name: str | None
    version: str | None
    pyfunc: Any
    input_schema: Any
    fast: FastPredictor | None
    fast_reason: str
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    local_dir: Path | None = None

    _headers: dict[tuple[str, str], list[tuple[bytes, bytes]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def version_label(self) -> str:
        return self.version or "none"

    def response_headers(self, scoring_path: str, alias: str = "") -> list[tuple[bytes, bytes]]:
        """`X-Model-Version`, `X-Model-Name`, `X-Model-Alias` (and `X-Scoring-Path`), built once
        per version, scoring path and alias."""
        key = (scoring_path, alias)
        headers = self._headers.get(key)
        if headers is None:
            headers = [
                (b"x-model-version", self.version_label.encode()),
                (b"x-model-name", (self.name or "").encode()),
            ]
            if alias:
                headers.append((b"x-model-alias", alias.encode()))
            if scoring_path:
                headers.append((b"x-scoring-path", scoring_path.encode()))
            self._headers[key] = headers
        return headers

    def score_with_mlflow(self, body: bytes, content_type: str) -> Answer:
        """MLflow's scoring server, verbatim: parsing, schema enforcement, predict, encoding."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server

        try:
            result = scoring_server.invocations(body, content_type, self.pyfunc, self.input_schema)
        except MlflowException as exc:
            return Answer(exc.get_http_status_code(), exc.serialize_as_json().encode())
        except RecursionError:
            # json.loads (and pandas after it) recurse once per nesting level: a deep enough
            # body exhausts the stack before MLflow sees it. The client's body, not our fault.
            return error_answer(400, "BAD_REQUEST", "Request body is nested too deeply")
        except Exception as exc:  # what FastAPI would turn into a bare 500
            _logger.exception("unexpected error scoring with %s", self.uri)
            return error_answer(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")
        response = result.response
        body_out = response.encode() if isinstance(response, str) else bytes(response)
        if result.status >= 400 and not result.mimetype.startswith(JSON):
            # MLflow answers its 415s (content type, charset) in plain text: every error of
            # ours is MLflow's error JSON, so a client parses one shape (same status code).
            message = body_out.decode("utf-8", "replace")
            return error_answer(result.status, "BAD_REQUEST", message)
        return Answer(result.status, body_out, result.mimetype)

    def release(self) -> None:
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)


def _self_check(model: ServedModel, fast: FastPredictor) -> str | None:
    """Run the model's input example (or a row of zeros) through both paths; None if they agree."""
    import numpy as np
    import orjson
    import pandas as pd

    example = model.pyfunc.input_example
    spec = fast.spec
    longs = spec.long_columns
    if spec.columns is None:
        if isinstance(example, np.ndarray) and example.ndim == 2:
            rows = example.tolist()
        else:
            rows = [[0.0] * spec.width]
    elif isinstance(example, pd.DataFrame) and list(example.columns) == list(spec.columns):
        rows = [
            [int(v) if i in longs else float(v) for i, v in enumerate(row)]
            for row in example.itertuples(index=False)
        ]
    else:
        rows = [[0] * spec.width]
    # Also nearby rows (double columns scaled), so a comparison is not decided by 1-3 rows.
    rows = rows + [
        [v if i in longs else float(v) * factor for i, v in enumerate(row)]
        for factor in (0.9, 1.1, 0.5)
        for row in rows
    ]
    if spec.columns is None:
        payload: dict[str, Any] = {"inputs": rows}
    else:
        payload = {"dataframe_split": {"columns": list(spec.columns), "data": rows}}
    body = orjson.dumps(payload)
    reference = model.score_with_mlflow(body, JSON)
    if reference.status != 200:
        return f"MLflow's path answers the example with {reference.status}"
    fast_body = fast.try_predict(body)
    if fast_body is None:
        return "fast path declined the model's own example"
    if orjson.loads(fast_body) != orjson.loads(reference.body):
        return "fast path and MLflow disagree on the model's example"
    return None


_HTTP_TIMEOUT_VARIABLE = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_http_timeout_lock = threading.Lock()


@contextmanager
def http_timeout(seconds: float | None) -> Iterator[None]:
    """MLflow's HTTP read timeout (MLFLOW_HTTP_REQUEST_TIMEOUT, read by MLflow at every request)
    raised to `seconds` while the block runs, then restored; `None`: unchanged.

    Serving sets that variable low (registry_timeout_seconds) so that registry polls fail fast.
    A model download needs far more: MLflow's artifact proxy (3.17) copies each file whole from
    S3 to a temporary file before it sends the first byte, about 15 s for 2 GiB on 2 busy cores,
    so a 10 s read timeout fails every large model, retry after retry. The variable is
    process-wide: a registry poll made during a download waits as long (loads run one at a time,
    on the loader thread, while the loaded models keep answering)."""
    if seconds is None:
        yield
        return
    with _http_timeout_lock:
        before = os.environ.get(_HTTP_TIMEOUT_VARIABLE)
        os.environ[_HTTP_TIMEOUT_VARIABLE] = str(math.ceil(seconds))
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_HTTP_TIMEOUT_VARIABLE, None)
            else:
                os.environ[_HTTP_TIMEOUT_VARIABLE] = before


def load_served_model(
    uri: str, name: str | None, version: str | None, download_timeout: float | None = None
) -> ServedModel:
    """Download and load `uri` (HTTP read timeout `download_timeout` for the download); decide
    whether the fast path applies. Raises on failure."""
    import mlflow
    import mlflow.pyfunc

    started = time.perf_counter()
    local_dir = Path(tempfile.mkdtemp(prefix="mlstack-serve-"))
    try:
        with http_timeout(download_timeout):
            local_path = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(local_dir)
            )
        pyfunc_model = mlflow.pyfunc.load_model(local_path)
        model = ServedModel(
            uri=uri,
            name=name,
            version=version,
            pyfunc=pyfunc_model,
            input_schema=pyfunc_model.metadata.get_input_schema(),
            fast=None,
            fast_reason="",
            load_seconds=0.0,
            local_dir=local_dir,
        )
        fast, reason = FastPredictor.for_model(pyfunc_model)
        if fast is not None and (problem := _self_check(model, fast)) is not None:
            fast, reason = None, problem
        model.fast, model.fast_reason = fast, reason
        model.load_seconds = time.perf_counter() - started
        return model
    except BaseException:
        shutil.rmtree(local_dir, ignore_errors=True)
        raise
