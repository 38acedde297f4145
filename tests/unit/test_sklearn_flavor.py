"""The trainer writes MLflow's sklearn model format itself (mlstack/sklearn_flavor.py, from the skops
file its fitting process made): it must write what `mlflow.sklearn.save_model` writes, and load
as any sklearn model does. A new MLflow that changes its format fails here first."""

from __future__ import annotations

from pathlib import Path

import mlflow.sklearn
import numpy as np
import pytest
import yaml
from mlflow.models import Model, infer_signature
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlstack.data import load_dataset, split_dataset
from mlstack.fitting import package_model
from mlstack.model_requirements import sklearn_model_requirements
from mlstack.params import DataParams
from mlstack.sklearn_flavor import SkopsFileFlavor

pytestmark = pytest.mark.unit

# Differ between any two saves of the same model: when, and which random id.
VOLATILE = {"utc_time_created", "model_uuid"}


def _split(dataset: str):
    data = DataParams(dataset=dataset, test_size=0.2, random_state=42)
    return split_dataset(load_dataset(data, Path("."), "test", "classification"), data, "", "")


@pytest.mark.parametrize(
    ("dataset", "estimator"),
    [
        ("breast_cancer", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        # forests need skops to trust their tree type: the list must be recorded the same way
        ("wine", make_pipeline(RandomForestClassifier(n_estimators=5, random_state=0))),
    ],
)
def test_the_same_directory_as_mlflow_sklearn_save_model(
    tmp_path: Path, dataset: str, estimator
) -> None:
    split = _split(dataset)
    estimator.fit(split.X_train, split.y_train)
    (tmp_path / "work").mkdir()
    package = package_model(estimator, 0, split, tmp_path / "work")
    common = {
        "signature": infer_signature(split.X_train, package.train_predictions),
        "input_example": split.X_train.head(5),
        "pip_requirements": sklearn_model_requirements(),
    }
    ours, theirs = tmp_path / "ours", tmp_path / "mlflow"
    SkopsFileFlavor(package).save_model(str(ours), mlflow_model=Model(), **common)
    mlflow.sklearn.save_model(
        estimator,
        str(theirs),
        mlflow_model=Model(),
        serialization_format="skops",
        skops_trusted_types=package.skops_trusted_types,
        **common,
    )

    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for name in ("requirements.txt", "conda.yaml", "python_env.yaml", "input_example.json"):
        assert (ours / name).read_text() == (theirs / name).read_text(), name
    ours_mlmodel = yaml.safe_load((ours / "MLmodel").read_text())
    theirs_mlmodel = yaml.safe_load((theirs / "MLmodel").read_text())
    for volatile in VOLATILE:
        ours_mlmodel.pop(volatile, None)
        theirs_mlmodel.pop(volatile, None)
    # skops archives carry their own timestamps: the size may differ by a few bytes, not more
    ours_size, theirs_size = (
        ours_mlmodel.pop("model_size_bytes"),
        theirs_mlmodel.pop("model_size_bytes"),
    )
    assert abs(ours_size - theirs_size) < 64
    assert ours_mlmodel == theirs_mlmodel
    assert ours_mlmodel["flavors"]["sklearn"]["skops_trusted_types"] == package.skops_trusted_types

    for path in (ours, theirs):
        loaded = mlflow.sklearn.load_model(str(path))
        assert np.array_equal(loaded.predict(split.X_test), estimator.predict(split.X_test))
        pyfunc = mlflow.pyfunc.load_model(str(path))
        assert np.array_equal(pyfunc.predict(split.X_test), estimator.predict(split.X_test))


def test_written_requirements_are_required(tmp_path: Path) -> None:
    split = _split("breast_cancer")
    estimator = make_pipeline(StandardScaler(), LogisticRegression()).fit(
        split.X_train, split.y_train
    )
    (tmp_path / "work").mkdir()
    package = package_model(estimator, 0, split, tmp_path / "work")
    with pytest.raises(ValueError, match="pip_requirements"):
        SkopsFileFlavor(package).save_model(str(tmp_path / "m"), mlflow_model=Model())
