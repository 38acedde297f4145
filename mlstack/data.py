"""Training data: scikit-learn's built-in data sets, or a user's CSV file.

Nothing is downloaded at run time: the built-in sets ship inside scikit-learn. A CSV is checked
before any run starts (file exists, target column present, numeric features, no missing values),
and each problem is a `ParamsError` naming the key, so a bad file never creates a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from sklearn import datasets
from sklearn.model_selection import train_test_split

from mlstack.params import DataParams, ParamsError

_LOADERS = {
    "diabetes": datasets.load_diabetes,
    "breast_cancer": datasets.load_breast_cancer,
    "wine": datasets.load_wine,
}
MIN_ROWS = 10


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # where it came from, for the run's tags and MLflow's dataset source
    features: pd.DataFrame
    target: pd.Series

    @property
    def frame(self) -> pd.DataFrame:
        return pd.concat([self.features, self.target], axis=1)


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def load_dataset(data: DataParams, params_dir: Path, source: str, task: str) -> Dataset:
    """Load what `data` names. `source` (the params file) prefixes every error message."""
    if data.path is None:
        assert data.dataset is not None  # guaranteed by DataParams
        bunch = _LOADERS[data.dataset](as_frame=True)
        return Dataset(
            name=data.dataset,
            source=f"sklearn.datasets.load_{data.dataset}",
            features=bunch.data.astype("float64"),
            target=bunch.target.rename("target"),
        )
    assert data.target is not None
    return _load_csv(_resolve(data.path, params_dir, source), data.target, source, task)


def _resolve(path_value: str, params_dir: Path, source: str) -> Path:
    # Relative paths are relative to params.json (so an image and a checkout agree); a path that
    # only exists relative to the working directory (typed with --set) is accepted too.
    path = Path(path_value).expanduser()
    candidates = [path] if path.is_absolute() else [params_dir / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ParamsError(f"{source}: key 'data.path': file not found (tried {tried})")


def _load_csv(path: Path, target: str, source: str, task: str) -> Dataset:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ParamsError(
            f"{source}: key 'data.path': {path} is not a readable CSV: {exc}"
        ) from None
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise ParamsError(
            f"{source}: key 'data.target': column {target!r} not in {path.name} (columns: {columns})"
        )
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise ParamsError(f"{source}: key 'data.path': {path.name} has no feature columns")
    if len(frame) < MIN_ROWS:
        raise ParamsError(
            f"{source}: key 'data.path': {path.name} has {len(frame)} rows; at least {MIN_ROWS} needed"
        )
    non_numeric = [
        str(c)
        for c in features.columns
        if not is_numeric_dtype(features[c]) or is_bool_dtype(features[c])
    ]
    if non_numeric:
        raise ParamsError(
            f"{source}: key 'data.path': non-numeric feature columns in {path.name}: "
            f"{', '.join(non_numeric)} (encode them as numbers first)"
        )
    missing = [str(c) for c in frame.columns if frame[c].isna().any()]
    if missing:
        raise ParamsError(
            f"{source}: key 'data.path': missing values in {path.name}, columns: {', '.join(missing)}"
        )
    y = frame[target]
    if task == "regression" and not is_numeric_dtype(y):
        raise ParamsError(
            f"{source}: key 'data.target': column {target!r} must be numeric for a regression"
        )
    if task == "classification" and y.nunique() < 2:
        raise ParamsError(
            f"{source}: key 'data.target': column {target!r} needs at least two classes"
        )
    return Dataset(
        name=path.stem,
        source=str(path),
        features=features.astype("float64"),
        target=y,
    )


def split_dataset(dataset: Dataset, data: DataParams, task: str, source: str) -> Split:
    stratify = dataset.target if task == "classification" else None
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            dataset.features,
            dataset.target,
            test_size=data.test_size,
            random_state=data.random_state,
            stratify=stratify,
        )
    except ValueError as exc:  # e.g. a class too small to stratify
        raise ParamsError(f"{source}: key 'data.test_size': cannot split the data: {exc}") from None
    return Split(X_train, X_test, y_train, y_test)
