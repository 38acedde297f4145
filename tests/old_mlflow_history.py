"""Run with an OLDER MLflow (scripts/old-mlflow-venv.sh), against a tracking server of that same
release: history the way that release wrote it, for tests/reliability/test_upgrade.py.

Two runs with params, tags, a 10-step metric history and an `mlflow.sklearn.log_model`; both
registered as versions 1 and 2 of one model, with @champion on version 2, a version tag, and (where
the release has them: 2.x, deprecated in 3.x) version 1 in stage "Production". Prints one JSON
line describing what it made. Stock MLflow only: no mlstack.
"""

from __future__ import annotations

import argparse
import json
import warnings

import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

MAJOR = int(mlflow.__version__.split(".")[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(11)
    features = rng.random((50, 3))
    labels = (features[:, 0] > features[:, 2]).astype(int)
    experiment_id = mlflow.set_experiment(f"made-by-mlflow-{mlflow.__version__}").experiment_id
    client = MlflowClient()
    runs = []
    for index in range(2):
        with mlflow.start_run(run_name=f"old-{index}") as run:
            mlflow.log_params({"C": 1.0 + index, "solver": "lbfgs"})
            mlflow.set_tag("made_by", f"mlflow {mlflow.__version__}")
            for step in range(10):
                mlflow.log_metric("loss", 1.0 / (step + 2 + index), step=step)
            estimator = LogisticRegression(C=1.0 + index).fit(features, labels)
            mlflow.log_metric("accuracy", float(estimator.score(features, labels)))
            where = {"name": "model"} if MAJOR >= 3 else {"artifact_path": "model"}
            mlflow.sklearn.log_model(
                estimator, registered_model_name=args.model, input_example=features[:2], **where
            )
            runs.append(run.info.run_id)
    client.set_registered_model_alias(args.model, "champion", "2")
    client.set_model_version_tag(args.model, "1", "validated", "yes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in 3.x, still there
        client.transition_model_version_stage(args.model, "1", "Production")
    metrics = {
        run_id: sorted(
            (m.key, m.value, m.timestamp, m.step)
            for key in ("loss", "accuracy")
            for m in client.get_metric_history(run_id, key)
        )
        for run_id in runs
    }
    probe = [[0.2, 0.5, 0.9], [0.8, 0.1, 0.3]]
    champion = mlflow.pyfunc.load_model(f"models:/{args.model}@champion")
    print(json.dumps({
        "mlflow": mlflow.__version__,
        "experiment_id": experiment_id,
        "runs": runs,
        "metrics": metrics,
        "probe": probe,
        "predictions": [int(p) for p in champion.predict(np.asarray(probe))],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
