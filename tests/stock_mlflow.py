"""A stock MLflow training script, in the shape of the setups teams come from: no mlstack at all.

One experiment with several runs; each logs params, a metric history, a plot and an
`mlflow.sklearn.log_model`; the first two runs' models become versions 1 and 2 of one registered
model, with an alias and tags. Whatever `MLFLOW_TRACKING_URI` says is where it goes (a server, a
`./mlruns` file store, `sqlite:///mlflow.db`). Prints one JSON line: the ids it made.

    python tests/stock_mlflow.py --experiment NAME [--runs 3] [--model NAME]
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="")
    args = parser.parse_args()

    rng = np.random.default_rng(7)
    features = rng.random((40, 3))
    labels = (features[:, 0] + features[:, 1] > 1).astype(int)
    experiment_id = mlflow.set_experiment(args.experiment).experiment_id
    made = []
    for index in range(args.runs):
        with mlflow.start_run(run_name=f"run-{index}") as run:
            regularisation = 0.5 + index
            mlflow.log_params({"C": regularisation, "index": index})
            mlflow.set_tag("team", "forecasting")
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1 + index), step=step)
            estimator = LogisticRegression(C=regularisation).fit(features, labels)
            mlflow.log_metric("accuracy", float(estimator.score(features, labels)))
            figure = plt.figure()
            plt.plot(estimator.coef_[0])
            mlflow.log_figure(figure, "plots/coefficients.png")
            plt.close(figure)
            registered = args.model if args.model and index < 2 else None
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                input_example=features[:2],
                registered_model_name=registered,
            )
            made.append({"run_id": run.info.run_id, "model_id": info.model_id})
    if args.model:
        client = MlflowClient()
        client.set_registered_model_alias(args.model, "champion", "2")
        client.set_registered_model_tag(args.model, "owner", "forecasting")
        client.set_model_version_tag(args.model, "1", "validated", "yes")
    print(json.dumps({"experiment_id": experiment_id, "runs": made}))


if __name__ == "__main__":
    main()
