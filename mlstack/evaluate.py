"""Test-set metrics and the plots logged with every run (PNG, plus CSV for coefficients)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: containers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
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


def is_better(candidate: float, incumbent: float, higher_is_better: bool) -> bool:
    """Strictly better: a tie keeps the incumbent, so re-running the same config changes nothing."""
    return candidate > incumbent if higher_is_better else candidate < incumbent


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_predicted_vs_actual(y_true: Any, y_pred: Any, out_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true, y_pred, s=12, alpha=0.7)
    low, high = float(np.min([y_true, y_pred])), float(np.max([y_true, y_pred]))
    ax.plot([low, high], [low, high], "r--", linewidth=1, label="perfect")
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (test set)")
    ax.legend()
    return _save(fig, out_dir / "predicted_vs_actual.png")


def plot_residuals(y_true: Any, y_pred: Any, out_dir: Path) -> Path:
    residuals = np.asarray(y_true) - np.asarray(y_pred)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(y_pred, residuals, s=12, alpha=0.7)
    ax.axhline(0, color="r", linestyle="--", linewidth=1)
    ax.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals (test set)")
    return _save(fig, out_dir / "residuals.png")


def plot_confusion_matrix(y_true: Any, y_pred: Any, classes: np.ndarray, out_dir: Path) -> Path:
    matrix = skm.confusion_matrix(y_true, y_pred, labels=classes)
    fig, ax = plt.subplots(figsize=(5, 4))
    skm.ConfusionMatrixDisplay(matrix, display_labels=classes).plot(ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (test set)")
    return _save(fig, out_dir / "confusion_matrix.png")


def plot_roc(y_true: Any, y_proba: np.ndarray, classes: np.ndarray, out_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(classes) == 2:
        skm.RocCurveDisplay.from_predictions(
            y_true, y_proba[:, 1], pos_label=classes[1], ax=ax, name=f"class {classes[1]}"
        )
    else:
        y_bin = label_binarize(y_true, classes=classes)
        for index, label in enumerate(classes):
            skm.RocCurveDisplay.from_predictions(
                y_bin[:, index], y_proba[:, index], ax=ax, name=f"class {label} vs rest"
            )
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set_title("ROC (test set)")
    return _save(fig, out_dir / "roc_curve.png")


def plot_feature_weights(weights: pd.Series, kind: str, out_dir: Path) -> list[Path]:
    """Coefficients or feature importances: a bar chart (PNG) and the numbers (CSV)."""
    ordered = weights.reindex(weights.abs().sort_values().index)
    csv_path = out_dir / f"{kind}.csv"
    ordered[::-1].rename(kind).to_csv(csv_path, index_label="feature")
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.25 * len(ordered))))
    ax.barh([str(i) for i in ordered.index], ordered.to_numpy())
    ax.set(xlabel=kind.replace("_", " "), title=kind.replace("_", " ").capitalize())
    return [_save(fig, out_dir / f"{kind}.png"), csv_path]


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
