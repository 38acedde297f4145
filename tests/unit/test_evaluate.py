"""Metric, plot and promotion-decision helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlstack import evaluate as ev
from mlstack.params import is_better
from mlstack.plots import draw_plots
from mlstack.registry import PromotionDecision

pytestmark = pytest.mark.unit


def test_regression_metrics_match_hand_computed_values() -> None:
    y_true, y_pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0])
    m = ev.regression_metrics(y_true, y_pred)
    assert m["rmse"] == pytest.approx(1.0)  # sqrt(4 / 4)
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4 / 5)


def test_classification_metrics_binary_and_multiclass() -> None:
    classes = np.array([0, 1])
    y_true = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    y_pred = classes[proba.argmax(axis=1)]
    m = ev.classification_metrics(y_true, y_pred, proba, classes)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(1.0)
    assert m["roc_auc"] == pytest.approx(1.0)
    assert set(m) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}

    three = np.array([0, 1, 2])
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    m3 = ev.classification_metrics(y3, three[p3.argmax(axis=1)], p3, three)
    assert m3["accuracy"] == pytest.approx(0.75)
    assert 0.5 < m3["roc_auc"] <= 1.0  # one-vs-rest macro average


@pytest.mark.parametrize(
    ("candidate", "incumbent", "higher", "expected"),
    [(0.9, 0.8, True, True), (0.8, 0.9, True, False), (0.8, 0.8, True, False),
     (50.0, 60.0, False, True), (60.0, 50.0, False, False), (50.0, 50.0, False, False)],
)  # fmt: skip
def test_is_better_is_strict(
    candidate: float, incumbent: float, higher: bool, expected: bool
) -> None:
    assert is_better(candidate, incumbent, higher) is expected


def test_promotion_decision_summary_and_tags() -> None:
    kept = PromotionDecision("m", "3", "champion", "rmse", 60.0, "2", 50.0, promoted=False)
    assert kept.summary == "@champion unchanged: rmse 60 does not beat 50 of v2"
    assert kept.tags()["mlstack.promotion.decision"] == "kept"
    first = PromotionDecision("m", "1", "champion", "rmse", 60.0, None, None, promoted=True)
    assert "first version" in first.summary
    assert first.tags()["mlstack.promotion.champion_version"] == ""


def test_plots_are_png_and_weights_csv(tmp_path: Path) -> None:
    data = load_wine(as_frame=True)
    X, y = data.data, data.target
    forest = make_pipeline(RandomForestClassifier(n_estimators=5, random_state=0)).fit(X, y)
    proba, classes = forest.predict_proba(X), forest.classes_
    numbers = ev.plot_data(
        forest, list(X.columns), "classification", y, forest.predict(X), proba, classes
    )
    assert numbers.confusion is not None and numbers.confusion.sum() == len(y)
    assert [curve.label for curve in numbers.roc] == [f"class {c} vs rest" for c in classes]
    written = draw_plots(numbers, tmp_path)
    assert sorted(p.name for p in written) == [
        "confusion_matrix.png", "feature_importances.csv", "feature_importances.png", "roc_curve.png"
    ]  # fmt: skip
    for path in written:
        assert path.exists() and path.stat().st_size > 0
    for png in (p for p in written if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = pd.read_csv(tmp_path / "feature_importances.csv")
    assert list(weights.columns) == ["feature", "feature_importances"]
    assert set(weights["feature"]) == set(X.columns)
    assert weights["feature_importances"].sum() == pytest.approx(1.0)


def test_binary_roc_matches_scikit_learns_auc() -> None:
    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    proba = model.predict_proba(X)
    numbers = ev.plot_data(
        model, list(X.columns), "classification", y, model.predict(X), proba, model.classes_
    )
    (curve,) = numbers.roc
    assert curve.label == "class 1"
    assert curve.auc == pytest.approx(roc_auc_score(y, proba[:, 1]))


def test_linear_coefficients_by_feature(tmp_path: Path) -> None:
    X = pd.DataFrame({"a": np.arange(20.0), "b": np.ones(20) + np.arange(20.0) % 3})
    y = 3 * X["a"]
    model = make_pipeline(StandardScaler(), Ridge(alpha=0.0)).fit(X, y)
    kind, weights = ev.feature_weights(model, ["a", "b"])
    assert kind == "coefficients"
    assert abs(weights["a"]) > 10 * abs(weights["b"])
    numbers = ev.plot_data(model, ["a", "b"], "regression", y, model.predict(X))
    written = draw_plots(numbers, tmp_path)
    assert sorted(p.name for p in written) == [
        "coefficients.csv", "coefficients.png", "predicted_vs_actual.png", "residuals.png"
    ]  # fmt: skip
