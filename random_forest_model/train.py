"""Random forest classifier on scikit-learn's wine data (three classes). Trees need no scaling.

Usage: python random_forest_model/train.py [--params FILE] [--set key=value ...] [--experiment NAME] [--dry-run]
"""

from pathlib import Path

from mlstack.params import RandomForestParams
from mlstack.runner import run


def build_estimator(p: RandomForestParams):
    # Imported here, in the fitting process: the runner imports MLflow meanwhile (mlstack.fitting).
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        RandomForestClassifier(
            n_estimators=p.n_estimators,
            max_depth=p.max_depth,
            min_samples_split=p.min_samples_split,
            min_samples_leaf=p.min_samples_leaf,
            max_features=p.max_features,
            class_weight=p.class_weight,
            random_state=p.random_state,
            n_jobs=p.n_jobs,
        )
    )


if __name__ == "__main__":
    run(Path(__file__).resolve().parent, RandomForestParams, build_estimator)
