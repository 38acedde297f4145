"""The fitting process (mlstack/fitting.py), forked for real: its reports arrive in order, and a
failure inside it, raised or a crash, reaches the runner as FittingFailed with what went wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlstack.fitting import DataReport, FittingFailed, FittingProcess
from mlstack.params import LogisticParams, load_params

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _params(tmp_path: Path, **overrides: Any) -> tuple[LogisticParams, Path]:
    raw = json.loads((ROOT / "logistic_model" / "params.json").read_text()) | overrides
    path = tmp_path / "params.json"
    path.write_text(json.dumps(raw))
    params, _ = load_params(LogisticParams, path, [])
    return params, path


def _logistic(p: LogisticParams) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=p.C, max_iter=p.max_iter))


def _start(tmp_path: Path, build: Any, **overrides: Any) -> FittingProcess:
    params, path = _params(tmp_path, **overrides)
    work = tmp_path / "work"
    work.mkdir()
    return FittingProcess(params, path, build, work)


def test_reports_arrive_in_order_and_the_best_of_a_sweep_is_packaged(tmp_path: Path) -> None:
    fitting = _start(tmp_path, _logistic, sweep={"C": [0.001, 1.0]})
    try:
        _, data = fitting.receive("data")
        assert isinstance(data, DataReport)
        assert (data.name, data.frame.shape, data.target_name) == (
            "breast_cancer",
            (569, 31),
            "target",
        )
        aucs = []
        for index, c in enumerate((0.001, 1.0)):
            _, reported, params = fitting.receive("fitting")
            assert (reported, params.C) == (index, c)
            _, reported, metrics, plots = fitting.receive("fitted")
            assert reported == index and plots.confusion is not None
            aucs.append(metrics["roc_auc"])
        _, package = fitting.receive("model")
        assert package.index == aucs.index(max(aucs))
        assert package.skops_file.is_file() and package.skops_trusted_types == []
        assert len(package.train_predictions) == len(package.X_train)
    finally:
        fitting.close()


def test_bad_data_is_reported_before_anything_is_fitted(tmp_path: Path) -> None:
    fitting = _start(tmp_path, _logistic, data={"path": "missing.csv", "target": "y"})
    try:
        kind, message = fitting.receive("data", "bad-data")
        assert kind == "bad-data" and "key 'data.path': file not found" in message
    finally:
        fitting.close()


def _raises(p: LogisticParams) -> Any:
    raise ValueError("this estimator cannot be built")


def test_an_error_while_fitting_names_its_type_and_message(tmp_path: Path) -> None:
    fitting = _start(tmp_path, _raises)
    try:
        fitting.receive("data")
        fitting.receive("fitting")
        with pytest.raises(FittingFailed, match=r"^ValueError: this estimator cannot be built$"):
            fitting.receive("fitted")
    finally:
        fitting.close()


def _dies(p: LogisticParams) -> Any:
    os._exit(7)  # as a crash (a segfault, the OOM killer) would: no report, no exception


def test_a_process_that_dies_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    fitting = _start(tmp_path, _dies)
    try:
        fitting.receive("data")
        fitting.receive("fitting")
        with pytest.raises(FittingFailed, match=r"ended without a report \(exit code 7\)"):
            fitting.receive("fitted")
    finally:
        fitting.close()
