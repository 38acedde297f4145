"""Logistic regression on scikit-learn's breast cancer data (binary), features standardised.

Usage: python logistic_model/train.py [--params FILE] [--set key=value ...] [--experiment NAME] [--dry-run]
"""

from pathlib import Path

from mlstack.params import LogisticParams
from mlstack.runner import run


def build_estimator(p: LogisticParams):
    # Imported here, in the fitting process: the runner imports MLflow meanwhile (mlstack.fitting).
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = LogisticRegression(
        C=p.C,
        l1_ratio=p.l1_ratio,
        solver=p.solver,
        max_iter=p.max_iter,
        class_weight=p.class_weight,
    )
    return make_pipeline(StandardScaler(), classifier) if p.scale else make_pipeline(classifier)


if __name__ == "__main__":
    run(Path(__file__).resolve().parent, LogisticParams, build_estimator)
