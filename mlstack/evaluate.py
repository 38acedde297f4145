"""Test-set metrics, and the numbers behind the plots logged with every run.

Computed in the fitting process, which has scikit-learn; `mlstack.plots` draws them in the runner,
which has only matplotlib (the runner never imports scikit-learn: mlstack.fitting says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# scikit-learn is imported inside the functions that compute: `mlstack.plots` imports the data
# classes below into the runner, which must not import scikit-learn.


@dataclass(frozen=True)
class RocCurve:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


@dataclass(frozen=True)
class PlotData:
    """What the plots of one fitted configuration show: test-set truth and predictions for a
    regression; the confusion matrix and ROC curves for a classification; the final step's
    coefficients or importances by feature, when it has them."""

    task: str
    y_true: np.ndarray
    y_pred: np.ndarray
    classes: list[str] = field(default_factory=list)
    confusion: np.ndarray | None = None
    roc: list[RocCurve] = field(default_factory=list)
    weights: tuple[str, pd.Series] | None = None


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    from sklearn import metrics as skm

    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


def classification_metrics(
    y_true: Any, y_pred: Any, y_proba: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """Binary: the usual scores on the positive class. Multiclass: macro averages, and ROC AUC
    one-vs-rest."""
    from sklearn import metrics as skm

    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    pos_label = classes[1] if binary else 1
    scores = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision": skm.precision_score(
            y_true, y_pred, average=average, pos_label=pos_label, zero_division=0
        ),
        "recall": skm.recall_score(
            y_true, y_pred, average=average, pos_label=pos_label, zero_division=0
        ),
        "f1": skm.f1_score(y_true, y_pred, average=average, pos_label=pos_label, zero_division=0),
        "log_loss": skm.log_loss(y_true, y_proba, labels=classes),
    }
    if binary:
        scores["roc_auc"] = skm.roc_auc_score(y_true, y_proba[:, 1])
    else:
        scores["roc_auc"] = skm.roc_auc_score(
            y_true, y_proba, multi_class="ovr", average="macro", labels=classes
        )
    return {name: float(value) for name, value in scores.items()}


def plot_data(
    estimator: Any,
    feature_names: list[str],
    task: str,
    y_true: Any,
    y_pred: Any,
    y_proba: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> PlotData:
    """The numbers `mlstack.plots.draw_plots` draws, for a fitted `estimator` on the test set."""
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    weights = feature_weights(estimator, feature_names)
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    if task == "regression":
        return PlotData(task, truth, predicted, weights=weights)
    assert y_proba is not None and classes is not None
    if len(classes) == 2:
        columns = [(f"class {classes[1]}", truth == classes[1], y_proba[:, 1])]
    else:
        binary = label_binarize(truth, classes=classes)
        columns = [
            (f"class {label} vs rest", binary[:, i], y_proba[:, i])
            for i, label in enumerate(classes)
        ]
    curves = []
    for label, positive, score in columns:
        fpr, tpr, _ = skm.roc_curve(positive, score)
        curves.append(RocCurve(label, fpr, tpr, float(skm.auc(fpr, tpr))))
    return PlotData(
        task,
        truth,
        predicted,
        classes=[str(c) for c in classes],
        confusion=skm.confusion_matrix(truth, predicted, labels=classes),
        roc=curves,
        weights=weights,
    )


def feature_weights(estimator: Any, feature_names: list[str]) -> tuple[str, pd.Series] | None:
    """The final step's coefficients or importances, by feature; None when it has neither."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    if hasattr(final, "feature_importances_"):
        return "feature_importances", pd.Series(final.feature_importances_, index=feature_names)
    if hasattr(final, "coef_"):
        coef = np.atleast_2d(final.coef_)
        # multiclass: one row per class; the mean absolute weight summarises a feature
        values = coef[0] if coef.shape[0] == 1 else np.abs(coef).mean(axis=0)
        return "coefficients", pd.Series(values, index=feature_names)
    return None
