"""Linear regression on scikit-learn's diabetes data (LinearRegression, Ridge, Lasso or ElasticNet).

Usage: python linear_model/train.py [--params FILE] [--set key=value ...] [--experiment NAME] [--dry-run]
"""

from pathlib import Path

from mlstack.params import LinearParams
from mlstack.runner import run


def build_estimator(p: LinearParams):
    # Imported here, in the fitting process: the runner imports MLflow meanwhile (mlstack.fitting).
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    regressors = {
        "linear": lambda: LinearRegression(fit_intercept=p.fit_intercept),
        "ridge": lambda: Ridge(alpha=p.alpha, fit_intercept=p.fit_intercept),
        "lasso": lambda: Lasso(alpha=p.alpha, fit_intercept=p.fit_intercept, max_iter=p.max_iter),
        "elasticnet": lambda: ElasticNet(
            alpha=p.alpha, l1_ratio=p.l1_ratio, fit_intercept=p.fit_intercept, max_iter=p.max_iter
        ),
    }
    regressor = regressors[p.estimator]()
    return make_pipeline(StandardScaler(), regressor) if p.scale else make_pipeline(regressor)


if __name__ == "__main__":
    run(Path(__file__).resolve().parent, LinearParams, build_estimator)
