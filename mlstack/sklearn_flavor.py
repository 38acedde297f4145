"""MLflow's scikit-learn model format, written from a skops file made in the fitting process.

`mlflow.sklearn.log_model` needs the estimator object, so the process that calls it must import
scikit-learn as well as MLflow: seconds of imports one after the other. The trainer instead
serialises the estimator in its fitting process (`mlstack.fitting.package_model`, with skops as
MLflow does) and hands MLflow's own `Model.log` this flavor, whose `save_model` writes the same
directory `mlflow.sklearn.save_model` writes for a skops model with written pip requirements:
`MLmodel` (the `sklearn` and `python_function` flavors, signature, input example, size),
`model.skops`, `input_example.json`, `serving_input_example.json` (by `Model.log`),
`requirements.txt`, `conda.yaml` and `python_env.yaml`. `mlflow.sklearn.load_model` and
`mlstack serve` load it as any other sklearn model.

tests/unit/test_sklearn_flavor.py saves one estimator both ways and compares the directories, so a
new MLflow that changes its sklearn format fails there first.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import yaml
from mlflow import pyfunc
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example
from mlflow.sklearn import FLAVOR_NAME, SERIALIZATION_FORMAT_SKOPS
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _CONSTRAINTS_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _process_pip_requirements,
    _PythonEnv,
)
from mlflow.utils.file_utils import get_total_file_size, write_to
from mlflow.utils.model_utils import _validate_and_prepare_target_save_path

from mlstack.fitting import ModelPackage

MODEL_DATA_SUBPATH = "model.skops"  # mlflow.sklearn's name for a skops model


class SkopsFileFlavor:
    """A flavor module for `Model.log(flavor=...)`: its `save_model` copies the package's skops
    file in and writes what `mlflow.sklearn.save_model` writes around it."""

    __name__ = "mlflow.sklearn"  # the flavor name MLflow records for the logged model

    def __init__(self, package: ModelPackage) -> None:
        self.package = package

    def save_model(
        self,
        path: str,
        mlflow_model: Model,
        signature: Any = None,
        input_example: Any = None,
        pip_requirements: list[str] | None = None,
        **_: Any,
    ) -> None:
        if not pip_requirements:
            raise ValueError("pip_requirements are required: they are written, not inferred")
        _validate_and_prepare_target_save_path(path)
        _save_example(mlflow_model, input_example, path)
        if signature is not None:
            mlflow_model.signature = signature
        shutil.copyfile(self.package.skops_file, os.path.join(path, MODEL_DATA_SUBPATH))
        pyfunc.add_to_model(
            mlflow_model,
            loader_module="mlflow.sklearn",
            model_path=MODEL_DATA_SUBPATH,
            conda_env=_CONDA_ENV_FILE_NAME,
            python_env=_PYTHON_ENV_FILE_NAME,
            code=None,
            predict_fn="predict",
        )
        mlflow_model.add_flavor(
            FLAVOR_NAME,
            pickled_model=MODEL_DATA_SUBPATH,
            sklearn_version=self.package.sklearn_version,
            serialization_format=SERIALIZATION_FORMAT_SKOPS,
            code=None,
            skops_trusted_types=self.package.skops_trusted_types,
        )
        if size := get_total_file_size(path):
            mlflow_model.model_size_bytes = size
        mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))
        conda_env, requirements, constraints = _process_pip_requirements(
            None, pip_requirements, None
        )
        with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
            yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
        if constraints:
            write_to(os.path.join(path, _CONSTRAINTS_FILE_NAME), "\n".join(constraints))
        write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(requirements))
        _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))
