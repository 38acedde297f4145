"""params.json validation: every shipped file validates; every bad file exits 2 naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlstack.params import LinearParams, LogisticParams, RandomForestParams, load_params
from mlstack.runner import EXIT_BAD_PARAMS, main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TRAINERS = {
    "linear_model": LinearParams,
    "logistic_model": LogisticParams,
    "random_forest_model": RandomForestParams,
}


def shipped(model: str) -> dict[str, Any]:
    return json.loads((ROOT / model / "params.json").read_text())


@pytest.mark.parametrize("model", sorted(TRAINERS))
def test_every_shipped_params_file_validates(model: str) -> None:
    params, sha256 = load_params(TRAINERS[model], ROOT / model / "params.json")
    assert params.registered_model_name == model
    assert len(sha256) == 64


def _with(model: str, **changes: Any) -> dict[str, Any]:
    raw = shipped(model)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return raw


_DELETE = object()

# (model, params content, the key the message must name, a phrase it must contain)
BAD_PARAMS: list[tuple[str, Any, str, str]] = [
    ("linear_model", _with("linear_model", alhpa=1.0), "alhpa", "unknown key"),
    ("linear_model", _with("linear_model", alpha="0.5"), "alpha", "valid number"),
    ("linear_model", _with("linear_model", alpha=-1), "alpha", "greater than or equal to 0"),
    ("linear_model", _with("linear_model", estimator="svm"), "estimator", "'linear'"),
    ("linear_model", _with("linear_model", fit_intercept=1), "fit_intercept", "valid boolean"),
    ("linear_model", _with("linear_model", data__test_size=1.5), "data.test_size", "less than 1"),
    ("linear_model", _with("linear_model", data__dataset="iris"), "data.dataset", "'diabetes'"),
    ("linear_model", _with("linear_model", registered_model_name=_DELETE), "registered_model_name", "missing"),
    ("linear_model", _with("linear_model", promote__metric="accuracy"), "promote.metric", "not a metric"),
    ("linear_model", _with("linear_model", promote__extra=True), "promote.extra", "unknown key"),
    ("logistic_model", _with("logistic_model", C=0), "C", "greater than 0"),
    ("logistic_model", _with("logistic_model", l1_ratio=0.5), "solver", "saga"),
    ("random_forest_model", _with("random_forest_model", n_estimators=0), "n_estimators", "greater than or equal to 1"),
    ("random_forest_model", _with("random_forest_model", max_depth="deep"), "max_depth", "valid integer"),
    ("random_forest_model", _with("random_forest_model", sweep={"trees": [1, 2]}), "sweep.trees", "not a hyperparameter"),
    ("random_forest_model", _with("random_forest_model", sweep={"n_estimators": [10, -1]}), "n_estimators", "greater than or equal to 1"),
    ("random_forest_model", _with("random_forest_model", sweep={"n_estimators": []}), "sweep.n_estimators", "at least one value"),
    ("random_forest_model", [1, 2, 3], "", "JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "content", "key", "phrase"), BAD_PARAMS)
def test_bad_params_exit_2_naming_file_and_key(
    model: str,
    content: Any,
    key: str,
    phrase: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(content))
    code = main(ROOT / model, TRAINERS[model], lambda p: None, ["--params", str(params_file)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_PARAMS
    assert str(params_file) in err
    if key:
        assert f"'{key}'" in err
    assert phrase in err


def test_invalid_json_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params_file = tmp_path / "params.json"
    params_file.write_text('{\n  "alpha": 1.0,\n  oops\n}')
    code = main(ROOT / "linear_model", LinearParams, lambda p: None, ["--params", str(params_file)])
    assert code == EXIT_BAD_PARAMS
    err = capsys.readouterr().err
    assert "invalid JSON at line 3" in err and str(params_file) in err


@pytest.mark.parametrize(
    ("override", "key", "phrase"),
    [
        ("alpha=abc", "alpha", "valid number"),
        ("alhpa=1", "alhpa", "unknown key"),
        ("data.test_size=0", "data.test_size", "greater than 0"),
        ("data.test_size.x=1", "data.test_size", "not a nested object"),
        ("novalue", "novalue", "key=value"),
    ],
)
def test_bad_overrides_exit_2(
    override: str, key: str, phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(ROOT / "linear_model", LinearParams, lambda p: None, ["--set", override])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_PARAMS
    assert key in err and phrase in err


def test_overrides_are_typed_by_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--set", "alpha=0.25", "--set", "estimator=lasso", "--set", "fit_intercept=false",
            "--set", "data.test_size=0.3", "--dry-run"]  # fmt: skip
    assert main(ROOT / "linear_model", LinearParams, lambda p: None, argv) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out[: out.rindex("}") + 1])
    assert resolved["alpha"] == 0.25 and resolved["estimator"] == "lasso"
    assert resolved["fit_intercept"] is False and resolved["data"]["test_size"] == 0.3


def test_sweep_combinations_and_flat_params() -> None:
    raw = {
        **shipped("random_forest_model"),
        "sweep": {"n_estimators": [10, 20], "max_depth": [2, None]},
    }
    params = RandomForestParams.model_validate(raw)
    combos = params.sweep_combinations()
    assert len(combos) == 4 and {"n_estimators": 20, "max_depth": None} in combos
    flat = params.flat()
    assert flat["data.dataset"] == "wine" and flat["promote.metric"] == "f1" and "sweep" not in flat


CSV_CASES = [
    ("missing.csv", None, "target", "data.path", "file not found"),
    ("ok.csv", "a,b,y\n" + "1,2,3\n" * 12, "label", "data.target", "column 'label' not in"),
    ("text.csv", "a,b,y\n" + "1,x,3\n" * 12, "y", "data.path", "non-numeric feature columns"),
    ("nan.csv", "a,b,y\n" + "1,2,3\n" * 11 + "1,,3\n", "y", "data.path", "missing values"),
    ("small.csv", "a,b,y\n1,2,3\n", "y", "data.path", "at least 10 needed"),
]


@pytest.mark.parametrize(("name", "content", "target", "key", "phrase"), CSV_CASES)
def test_bad_csv_exits_2_before_any_run(
    name: str, content: str | None, target: str, key: str, phrase: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if content is not None:
        (tmp_path / name).write_text(content)
    raw = _with("linear_model", data={"path": name, "target": target})
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(raw))
    code = main(ROOT / "linear_model", LinearParams, lambda p: None, ["--params", str(params_file)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_PARAMS
    assert f"'{key}'" in err and phrase in err


def test_user_command_exits_2_on_bad_params(tmp_path: Path) -> None:
    """The exact command a user types, as a process: exit code 2 and one clear message."""
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(_with("logistic_model", C=-3)))
    result = subprocess.run(
        [sys.executable, str(ROOT / "logistic_model" / "train.py"), "--params", str(params_file)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "key 'C'" in result.stderr and str(params_file) in result.stderr
    assert result.stdout == ""  # nothing happened: no tracking call, no run


def test_unreachable_tracking_server_exits_3_naming_the_uri() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "linear_model" / "train.py")],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
             "MLSTACK_CONNECT_ATTEMPTS": "2", "MLSTACK_CONNECT_BACKOFF_SECONDS": "0.05"},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "http://127.0.0.1:9" in result.stderr and "after 2 attempts" in result.stderr
