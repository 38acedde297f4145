"""The plots logged with every run (PNG, plus CSV for coefficients), drawn from `PlotData`.

Matplotlib's object API only (`Figure`, rendered by Agg when saved): no pyplot, no global figure
state and no display, in containers and CI alike. This runs in the runner's process, which never
imports scikit-learn; the numbers come from `mlstack.evaluate.plot_data` in the fitting process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlstack.evaluate import PlotData, RocCurve


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_predicted_vs_actual(y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> Path:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(y_true, y_pred, s=12, alpha=0.7)
    low, high = float(np.min([y_true, y_pred])), float(np.max([y_true, y_pred]))
    ax.plot([low, high], [low, high], "r--", linewidth=1, label="perfect")
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (test set)")
    ax.legend()
    return _save(fig, out_dir / "predicted_vs_actual.png")


def plot_residuals(y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> Path:
    residuals = np.asarray(y_true) - np.asarray(y_pred)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(y_pred, residuals, s=12, alpha=0.7)
    ax.axhline(0, color="r", linestyle="--", linewidth=1)
    ax.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals (test set)")
    return _save(fig, out_dir / "residuals.png")


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], out_dir: Path) -> Path:
    """Counts by true (rows) and predicted (columns) class, each cell labelled."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis")
    threshold = (matrix.max() + matrix.min()) / 2.0
    for (row, col), count in np.ndenumerate(matrix):
        colour = image.cmap(0.0) if count > threshold else image.cmap(1.0)
        ax.text(col, row, f"{count:d}", ha="center", va="center", color=colour)
    ticks = np.arange(len(classes))
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=classes,
        yticklabels=classes,
        xlabel="Predicted label",
        ylabel="True label",
        title="Confusion matrix (test set)",
    )
    return _save(fig, out_dir / "confusion_matrix.png")


def plot_roc(curves: list[RocCurve], out_dir: Path) -> Path:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for curve in curves:
        ax.plot(curve.fpr, curve.tpr, label=f"{curve.label} (AUC = {curve.auc:.2f})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set(
        xlabel="False Positive Rate",
        ylabel="True Positive Rate",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        aspect="equal",
        title="ROC (test set)",
    )
    ax.legend(loc="lower right")
    return _save(fig, out_dir / "roc_curve.png")


def plot_feature_weights(weights: pd.Series, kind: str, out_dir: Path) -> list[Path]:
    """Coefficients or feature importances: a bar chart (PNG) and the numbers (CSV)."""
    ordered = weights.reindex(weights.abs().sort_values().index)
    csv_path = out_dir / f"{kind}.csv"
    ordered[::-1].rename(kind).to_csv(csv_path, index_label="feature")
    fig = Figure(figsize=(6, max(3.0, 0.25 * len(ordered))))
    ax = fig.subplots()
    ax.barh([str(i) for i in ordered.index], ordered.to_numpy())
    ax.set(xlabel=kind.replace("_", " "), title=kind.replace("_", " ").capitalize())
    return [_save(fig, out_dir / f"{kind}.png"), csv_path]


def draw_plots(data: PlotData, out_dir: Path) -> list[Path]:
    """Every plot of one fitted configuration, into `out_dir`; returns the files written."""
    if data.task == "regression":
        written = [
            plot_predicted_vs_actual(data.y_true, data.y_pred, out_dir),
            plot_residuals(data.y_true, data.y_pred, out_dir),
        ]
    else:
        assert data.confusion is not None
        written = [
            plot_confusion_matrix(data.confusion, data.classes, out_dir),
            plot_roc(data.roc, out_dir),
        ]
    if data.weights is not None:
        kind, weights = data.weights
        written += plot_feature_weights(weights, kind, out_dir)
    return written
