"""Typed, validated trainer parameters: `params.json` plus `--set key=value` overrides.

Validation happens at the edge, before any data is read or any MLflow call is made. Every problem
becomes a `ParamsError` whose message names the file, the key and what is wrong; the runner turns
it into exit code 2.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REGRESSION_METRICS = ("rmse", "mae", "r2")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
BUILTIN_DATASETS = ("diabetes", "breast_cancer", "wine")


class ParamsError(Exception):
    """A params file (or an override) is invalid: the message is meant for the user as is."""


class _Strict(BaseModel):
    # strict: "0.5" is not a float and 1 is not a bool in a params file; extra keys are typos.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Strict):
    dataset: Literal["diabetes", "breast_cancer", "wine"] | None = Field(
        default=None, description="A data set shipped inside scikit-learn."
    )
    path: str | None = Field(default=None, description="A CSV file; relative to params.json.")
    target: str | None = Field(default=None, description="The CSV's target column.")
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    random_state: int = Field(default=42, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.path is None and self.dataset is None:
            raise ValueError("set either 'dataset' (a built-in data set) or 'path' and 'target'")
        if self.path is not None and self.dataset is not None:
            raise ValueError("set 'dataset' or 'path', not both")
        if self.path is not None and not self.target:
            raise ValueError("'path' needs 'target', the name of the CSV's target column")
        if self.path is None and self.target is not None:
            raise ValueError("'target' only goes with 'path' (a CSV file)")
        return self


def is_better(candidate: float, incumbent: float, higher_is_better: bool) -> bool:
    """Strictly better: a tie keeps the incumbent, so re-running the same config changes nothing."""
    return candidate > incumbent if higher_is_better else candidate < incumbent


class PromoteParams(_Strict):
    metric: str = Field(description="The test metric that decides promotion.")
    higher_is_better: bool
    alias: str = Field(default="champion", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


class TrainerParams(_Strict):
    """What every trainer shares; each model adds its hyperparameters as top-level fields."""

    task: ClassVar[Literal["regression", "classification"]]
    metrics: ClassVar[tuple[str, ...]]

    registered_model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
    experiment: str = Field(min_length=1)
    data: DataParams
    promote: PromoteParams
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Hyperparameter -> values; one nested run per combination.",
    )

    @model_validator(mode="after")
    def _check_metric_and_sweep(self) -> Self:
        if self.promote.metric not in self.metrics:
            raise ValueError(
                f"key 'promote.metric': {self.promote.metric!r} is not a metric this trainer logs "
                f"(one of: {', '.join(self.metrics)})"
            )
        tunable = self.hyperparameter_names()
        for key, values in self.sweep.items():
            if key not in tunable:
                raise ValueError(
                    f"key 'sweep.{key}': not a hyperparameter (one of: {', '.join(tunable)})"
                )
            if not values:
                raise ValueError(f"key 'sweep.{key}': needs at least one value")
        return self

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        shared = set(TrainerParams.model_fields)
        return [name for name in cls.model_fields if name not in shared]

    def hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.hyperparameter_names()}

    def sweep_combinations(self) -> list[dict[str, Any]]:
        """Each combination of the sweep's values, as overrides of the hyperparameters."""
        if not self.sweep:
            return []
        keys = list(self.sweep)
        return [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.sweep.values())
        ]

    def flat(self) -> dict[str, Any]:
        """Every param as `dotted.key -> value`, the form logged to MLflow (sweep excluded)."""
        return flatten(self.model_dump(exclude={"sweep"}))


class LinearParams(TrainerParams):
    task = "regression"
    metrics = REGRESSION_METRICS

    estimator: Literal["linear", "ridge", "lasso", "elasticnet"] = "ridge"
    alpha: float = Field(default=1.0, ge=0.0, description="Regularisation strength.")
    l1_ratio: float = Field(default=0.5, ge=0.0, le=1.0, description="elasticnet only.")
    fit_intercept: bool = True
    scale: bool = Field(default=True, description="Standardise features first.")
    max_iter: int = Field(default=10_000, ge=1, le=1_000_000)


class LogisticParams(TrainerParams):
    task = "classification"
    metrics = CLASSIFICATION_METRICS

    C: float = Field(default=1.0, gt=0.0, description="Inverse regularisation strength.")
    l1_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="0 = L2, 1 = L1.")
    solver: Literal["lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga"] = "lbfgs"
    max_iter: int = Field(default=1000, ge=1, le=1_000_000)
    class_weight: Literal["balanced"] | None = None
    scale: bool = True

    @model_validator(mode="after")
    def _solver_supports_l1(self) -> Self:
        if self.l1_ratio > 0 and self.solver not in ("liblinear", "saga"):
            raise ValueError(
                f"key 'solver': l1_ratio > 0 needs 'saga' or 'liblinear', not {self.solver!r}"
            )
        return self


class RandomForestParams(TrainerParams):
    task = "classification"
    metrics = CLASSIFICATION_METRICS

    n_estimators: int = Field(default=100, ge=1, le=5000)
    max_depth: int | None = Field(default=None, ge=1, le=1000)
    min_samples_split: int = Field(default=2, ge=2)
    min_samples_leaf: int = Field(default=1, ge=1)
    max_features: Literal["sqrt", "log2"] | float | None = "sqrt"
    class_weight: Literal["balanced", "balanced_subsample"] | None = None
    random_state: int = Field(default=42, ge=0)
    n_jobs: int | None = Field(default=None, description="Trees fitted in parallel (-1 = cores).")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def parse_override(item: str) -> tuple[list[str], Any]:
    """`key=value` -> (["key"], value); the value is JSON when it parses as JSON, else a string.

    So `alpha=0.5` is a float, `fit_intercept=false` a bool, `max_depth=null` None and
    `estimator=lasso` the string "lasso"; the schema then decides whether the type is right.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ParamsError(f"--set {item!r}: expected key=value (dotted keys for nested values)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    merged = json.loads(json.dumps(raw))  # deep copy of plain JSON data
    for item in overrides:
        path, value = parse_override(item)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"--set {item!r}: {'.'.join(path[:-1])!r} is not a nested object")
            node = child
        node[path[-1]] = value
    return merged


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"key {key!r}: unknown key"
    if kind == "missing":
        return f"key {key!r}: missing (required)"
    message = error["msg"].removeprefix("Value error, ")
    if not key:  # a model-level check: its message already names the keys it is about
        return message
    return f"key {key!r}: {message} (got {error['input']!r})"


def _allowed_keys_hint(cls: type[BaseModel], error: dict[str, Any]) -> str:
    if error["type"] != "extra_forbidden":
        return ""
    model: type[BaseModel] | None = cls
    for part in error["loc"][:-1]:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    if model is None:
        return ""
    return f" (allowed: {', '.join(model.model_fields)})"


def validate_params(cls: type[TrainerParams], raw: Any, source: str) -> TrainerParams:
    """Validate plain data against a trainer's schema; errors name `source` and each key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a JSON object at the top level")
    try:
        params = cls.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{_describe(err)}{_allowed_keys_hint(cls, err)}" for err in exc.errors()]
        raise ParamsError(f"{source}: " + f"\n{source}: ".join(lines)) from None
    for index, combo in enumerate(params.sweep_combinations()):
        try:
            cls.model_validate({**raw, **combo, "sweep": {}})
        except ValidationError as exc:
            lines = [_describe(err) for err in exc.errors()]
            raise ParamsError(
                f"{source}: key 'sweep': combination {index + 1} {combo}: " + "; ".join(lines)
            ) from None
    return params


def load_params(
    cls: type[TrainerParams], path: Path, overrides: list[str] | None = None
) -> tuple[TrainerParams, str]:
    """Read, override and validate a params file. Returns the params and the file's sha256."""
    overrides = overrides or []
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read params file: {exc.strerror}") from None
    try:
        raw = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ParamsError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not UTF-8 text") from None
    if overrides:
        if not isinstance(raw, dict):
            raise ParamsError(f"{path}: expected a JSON object at the top level")
        raw = apply_overrides(raw, overrides)
        source = f"{path} (with --set {' --set '.join(overrides)})"
    else:
        source = str(path)
    return validate_params(cls, raw, source), hashlib.sha256(content).hexdigest()
