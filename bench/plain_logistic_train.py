"""The plainest stock MLflow script that does a logistic trainer's job: the baseline that
`bench/trainer_bench.py` times `logistic_model/train.py` against.

Breast cancer data, a scaled logistic regression, `log_param` and `log_metric` once per value,
and `mlflow.sklearn.log_model` with a signature and `registered_model_name`: what a user writes
from MLflow's quick start. Reads MLFLOW_TRACKING_URI like any MLflow script.
"""

import mlflow
from mlflow.models import infer_signature
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

params = {"C": 1.0, "solver": "lbfgs", "max_iter": 1000, "test_size": 0.2, "random_state": 42}

X, y = load_breast_cancer(return_X_y=True, as_frame=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=params["test_size"], random_state=params["random_state"], stratify=y
)

mlflow.set_experiment("plain_logistic")
with mlflow.start_run():
    for key, value in params.items():
        mlflow.log_param(key, value)
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=params["C"], solver=params["solver"], max_iter=params["max_iter"]),
    )
    model.fit(X_train, y_train)
    proba = model.predict_proba(X_test)[:, 1]
    predicted = model.predict(X_test)
    metrics = {
        "accuracy": accuracy_score(y_test, predicted),
        "f1": f1_score(y_test, predicted),
        "roc_auc": roc_auc_score(y_test, proba),
        "log_loss": log_loss(y_test, proba),
    }
    for key, value in metrics.items():
        mlflow.log_metric(key, value)
    mlflow.sklearn.log_model(
        sk_model=model,
        name="model",
        signature=infer_signature(X_train, model.predict(X_train)),
        registered_model_name="plain_logistic",
    )
