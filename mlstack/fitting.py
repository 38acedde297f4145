"""The fitting process: everything a training run does with scikit-learn, beside the runner.

A trainer has two kinds of start-up work: importing scikit-learn (with SciPy, pandas, skops and
matplotlib) to load data and fit, and importing MLflow to reach the tracking server. Each takes
seconds and they do not depend on each other, so `mlstack.runner` forks this process before either
import: here scikit-learn is imported, the data are loaded and checked, each configuration is
fitted and evaluated and the best estimator is serialised with skops; in the runner MLflow and
matplotlib are imported, the run is created and logged, and the plots are drawn from the numbers
sent here. On two cores the two imports overlap,
and neither process imports what only the other needs (docs/training.md, "Where the time goes").

The fitting process reports through a pipe, in this order:

    ("data", DataReport)                 or ("bad-data", message), then nothing more
    ("fitting", index, params)           one per configuration (one, or each of a sweep's)
    ("fitted", index, metrics, plots)    its test metrics and the numbers of its plots (PlotData)
    ("model", ModelPackage)              the best configuration's estimator, serialised
    ("error", message)                   instead of any of the above, if something failed

It never talks to the tracking server: a failure here reaches the runner as an "error" message (or
as the pipe closing, if the process died), and the runner marks the run FAILED.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlstack.params import ParamsError, TrainerParams, is_better

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from mlstack.data import Dataset, Split
    from mlstack.evaluate import PlotData

EstimatorBuilder = Callable[[Any], Any]


@dataclass(frozen=True)
class DataReport:
    """What the run logs about its data set (MLflow's dataset input and the run's tags)."""

    name: str
    source: str
    frame: pd.DataFrame  # features and target, as `mlflow.data.from_pandas` takes them
    target_name: str


@dataclass(frozen=True)
class ModelPackage:
    """The best estimator serialised with skops, and what MLflow's sklearn flavor records."""

    index: int  # which configuration (0 unless a sweep)
    skops_file: Path
    skops_trusted_types: list[str]
    sklearn_version: str
    X_train: pd.DataFrame  # the signature's inputs and the input example come from it
    train_predictions: np.ndarray  # the signature's outputs


@dataclass
class Evaluation:
    estimator: Any
    metrics: dict[str, float]
    y_pred: np.ndarray
    y_proba: np.ndarray | None
    classes: np.ndarray | None


class FittingFailed(Exception):
    """The fitting process reported an error ("ValueError: ..."), or died."""

    names_its_type = True  # tracking.describe_run_failure prints it as it is


def fit_and_evaluate(estimator: Any, split: Split, task: str) -> Evaluation:
    from mlstack.evaluate import classification_metrics, regression_metrics

    started = time.perf_counter()
    estimator.fit(split.X_train, split.y_train)
    fit_seconds = time.perf_counter() - started
    y_pred = estimator.predict(split.X_test)
    if task == "regression":
        metrics, y_proba, classes = regression_metrics(split.y_test, y_pred), None, None
    else:
        y_proba = estimator.predict_proba(split.X_test)
        classes = estimator.classes_
        metrics = classification_metrics(split.y_test, y_pred, y_proba, classes)
    metrics["fit_time_seconds"] = fit_seconds
    return Evaluation(estimator, metrics, y_pred, y_proba, classes)


def describe_plots(evaluation: Evaluation, split: Split, task: str) -> PlotData:
    """The numbers behind the run's plots; the runner draws them (mlstack.plots)."""
    from mlstack.evaluate import plot_data

    return plot_data(
        evaluation.estimator,
        list(split.X_train.columns),
        task,
        split.y_test,
        evaluation.y_pred,
        evaluation.y_proba,
        evaluation.classes,
    )


def package_model(estimator: Any, index: int, split: Split, out_dir: Path) -> ModelPackage:
    """Serialise `estimator` as MLflow's sklearn flavor does (skops), and prove the file loads.

    The types skops will not load by default (the tree storage of forests, say) are trusted for
    this model only: it is our own output, and MLflow records the list with the model, so loading
    it later (serving) needs no blanket trust. Loading the file back and predicting the input
    example is the check MLflow's `log_model` makes by loading the model it saved."""
    import numpy as np
    import sklearn
    import skops.io

    skops_file = out_dir / "model.skops"
    skops.io.dump(estimator, skops_file)
    trusted = sorted(skops.io.get_untrusted_types(file=skops_file))
    example = split.X_train.head(5)
    reloaded = skops.io.load(skops_file, trusted=trusted)
    if not np.array_equal(reloaded.predict(example), estimator.predict(example)):
        raise FittingFailed("the serialised model does not predict what the fitted one does")
    return ModelPackage(
        index=index,
        skops_file=skops_file,
        skops_trusted_types=trusted,
        sklearn_version=sklearn.__version__,
        X_train=split.X_train,
        train_predictions=estimator.predict(split.X_train),
    )


def load_and_split(params: TrainerParams, params_path: Path) -> tuple[Dataset, Split]:
    """The run's data set and its train/test split; ParamsError (exit 2) names the bad key."""
    from mlstack.data import load_dataset, split_dataset

    task = type(params).task
    dataset = load_dataset(params.data, params_path.parent, str(params_path), task)
    return dataset, split_dataset(dataset, params.data, task, str(params_path))


def _fit_all(
    conn: Connection,
    params: TrainerParams,
    params_path: Path,
    build_estimator: EstimatorBuilder,
    workdir: Path,
) -> None:
    task = type(params).task
    try:
        dataset, split = load_and_split(params, params_path)
    except ParamsError as exc:
        conn.send(("bad-data", str(exc)))
        return
    frame = dataset.frame
    conn.send(
        (
            "data",
            DataReport(
                name=dataset.name,
                source=dataset.source,
                frame=frame,
                target_name=str(dataset.target.name),
            ),
        )
    )
    combos = params.sweep_combinations()
    configurations = [params.model_copy(update=c) for c in combos] if combos else [params]
    metric, higher = params.promote.metric, params.promote.higher_is_better
    best: tuple[int, Evaluation] | None = None
    for index, configuration in enumerate(configurations):
        conn.send(("fitting", index, configuration))
        evaluation = fit_and_evaluate(build_estimator(configuration), split, task)
        conn.send(("fitted", index, evaluation.metrics, describe_plots(evaluation, split, task)))
        if best is None or is_better(evaluation.metrics[metric], best[1].metrics[metric], higher):
            best = (index, evaluation)
    assert best is not None
    conn.send(("model", package_model(best[1].estimator, best[0], split, workdir)))


def _fitting_process(
    conn: Connection,
    params: TrainerParams,
    params_path: Path,
    build_estimator: EstimatorBuilder,
    workdir: Path,
) -> None:
    """The forked process's body: report each step, or the first error, then exit."""
    try:
        _fit_all(conn, params, params_path, build_estimator, workdir)
    except KeyboardInterrupt:
        pass  # the runner got the same signal and reports it
    except BaseException as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        traceback.print_exc(file=sys.stderr)
        with contextlib.suppress(BrokenPipeError, OSError):  # the runner is gone: nobody to tell
            conn.send(("error", detail))
    finally:
        conn.close()


class FittingProcess:
    """The runner's handle on the fitting process: start it, then read its reports in order."""

    def __init__(
        self,
        params: TrainerParams,
        params_path: Path,
        build_estimator: EstimatorBuilder,
        workdir: Path,
    ) -> None:
        # Both processes need numpy and pandas (scikit-learn here, MLflow in the runner): import
        # them once, before the fork, and each process imports only what the other does not need.
        import numpy  # noqa: F401
        import pandas  # noqa: F401

        # fork, not spawn: spawn would re-import the trainer's script (and scikit-learn with it).
        # No Python thread exists yet; OpenBLAS's own threads are fork-safe (pthread_atfork).
        context = multiprocessing.get_context("fork")
        self._conn, child_conn = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_fitting_process,
            args=(child_conn, params, params_path, build_estimator, workdir),
            name="mlstack-fitting",
            daemon=True,
        )
        self._process.start()
        child_conn.close()

    def receive(self, *kinds: str) -> tuple[Any, ...]:
        """The next report, which must be one of `kinds`; an error report raises FittingFailed."""
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join(timeout=10)
            raise FittingFailed(
                f"the fitting process ended without a report (exit code {self._process.exitcode})"
            ) from None
        if message[0] == "error":
            raise FittingFailed(message[1])
        if message[0] not in kinds:
            raise FittingFailed(f"unexpected report {message[0]!r} (expected {' or '.join(kinds)})")
        return message

    def close(self) -> None:
        """Stop the process if it still runs (the run failed, or the server was unreachable)."""
        self._conn.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(timeout=10)
