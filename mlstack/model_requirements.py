"""The pip requirements written with every model a trainer logs, decided here instead of inferred.

MLflow's `infer_pip_requirements` starts a second Python that re-imports and loads the model to
see which packages it touches: about 7 s of a 0.1 s logistic regression run. Its answer is not even
stable across environments: in the trainer image (mlflow-skinny, no dev tools) it is the four
distributions below; in a developer venv it adds numpy and scipy (not pruned because the full
`mlflow` there depends on them) and psutil and pytest (imported opportunistically by joblib and
`sklearn.utils._testing` when installed, never needed to load or predict).

So the list is fixed: exactly what inference writes in the trainer image for the three trainers'
skops-serialised scikit-learn pipelines. Versions are the installed ones, which in the images are
exactly constraints.txt's pins (the images install with `-c constraints.txt`; the file itself is
not copied in), and in a bootstrapped venv too.
"""

from __future__ import annotations

from importlib import metadata

# Distribution names, in the order MLflow writes them (sorted).
SKLEARN_MODEL_DISTRIBUTIONS = ("mlflow", "pandas", "scikit-learn", "skops")

# Trainer images carry mlflow-skinny only; the model still needs `mlflow` (the serving images have
# the full distribution at the same version), as MLflow itself writes.
_PROVIDERS = {"mlflow": ("mlflow", "mlflow-skinny")}


def installed_version(distribution: str) -> str:
    """The installed version of `distribution` (or of a distribution that provides it)."""
    for candidate in _PROVIDERS.get(distribution, (distribution,)):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    raise metadata.PackageNotFoundError(distribution)


def sklearn_model_requirements() -> list[str]:
    """`name==version` for every distribution a logged scikit-learn model needs to load."""
    return [f"{name}=={installed_version(name)}" for name in SKLEARN_MODEL_DISTRIBUTIONS]
