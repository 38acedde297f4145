"""The shared training runner behind every `<model>/train.py`.

A trainer supplies its params schema and a function that builds the estimator; this module does
the rest: parse the command line, validate params and data (exit 2), reach the tracking server
(exit 3), train, evaluate, log params/metrics/plots/model/data set, register, promote, summarise.

Exit codes: 0 done, 1 training failed after the run started (the run is marked FAILED),
2 bad params or data (no run created), 3 tracking server unreachable (no run created).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlstack import __version__
from mlstack.data import Dataset, Split, load_dataset, split_dataset
from mlstack.params import ParamsError, TrainerParams, load_params
from mlstack.settings import Settings, get_settings
from mlstack.tracking import (
    TrackingUnavailable,
    check_tracking_server,
    configure_client_retries,
    describe_run_failure,
    mark_as_model_training,
    mark_runs_failed,
    stop_client_retries,
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_PARAMS, EXIT_NO_TRACKING = 0, 1, 2, 3

EstimatorBuilder = Callable[[Any], Any]


def say(message: str) -> None:
    print(f"[mlstack] {message}", flush=True)


@dataclass
class Evaluation:
    estimator: Any
    metrics: dict[str, float]
    y_pred: np.ndarray
    y_proba: np.ndarray | None
    classes: np.ndarray | None


@dataclass
class Outcome:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    decision: Any  # registry.PromotionDecision
    children: int


def parse_args(model_dir: Path, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"{model_dir.name}/train.py",
        description=f"Train {model_dir.name} from its params.json, log it to MLflow, register it "
        "and promote it when it beats the current champion.",
        epilog="Exit codes: 0 done, 1 training failed (run marked FAILED), 2 bad params or data, "
        "3 tracking server unreachable.",
    )
    parser.add_argument(
        "--params", type=Path, default=model_dir / "params.json", help="params file to use"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param (repeatable; dotted keys for nested values, e.g. data.test_size=0.3)",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: from params.json)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the resolved params only"
    )
    return parser.parse_args(argv)


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


def write_plots(evaluation: Evaluation, split: Split, task: str, out_dir: Path) -> None:
    from mlstack import evaluate as ev

    if task == "regression":
        ev.plot_predicted_vs_actual(split.y_test, evaluation.y_pred, out_dir)
        ev.plot_residuals(split.y_test, evaluation.y_pred, out_dir)
    else:
        assert evaluation.y_proba is not None and evaluation.classes is not None
        ev.plot_confusion_matrix(split.y_test, evaluation.y_pred, evaluation.classes, out_dir)
        ev.plot_roc(split.y_test, evaluation.y_proba, evaluation.classes, out_dir)
    weights = ev.feature_weights(evaluation.estimator, list(split.X_train.columns))
    if weights is not None:
        ev.plot_feature_weights(weights[1], weights[0], out_dir)


def own_skops_types(estimator: Any) -> list[str]:
    """Types skops will not load by default (e.g. the tree storage of forests) in a model we have
    just fitted in this process. Trusting them is sound for our own output; MLflow records the list
    with the model, so loading it later (serving) needs no blanket trust."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(estimator)))


def git_commit(model_dir: Path) -> str | None:
    configured = get_settings().git_commit
    if configured:
        return configured
    try:
        result = subprocess.run(
            ["git", "-C", str(model_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


class TrainingRun:
    """One trainer invocation against a reachable tracking server."""

    def __init__(
        self,
        model_dir: Path,
        params: TrainerParams,
        params_sha256: str,
        dataset: Dataset,
        split: Split,
        build_estimator: EstimatorBuilder,
        experiment: str,
    ) -> None:
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient()
        self.model_dir = model_dir
        self.params = params
        self.dataset = dataset
        self.split = split
        self.build_estimator = build_estimator
        self.experiment = experiment
        self.task = type(params).task
        self.mlflow_dataset = mlflow.data.from_pandas(
            dataset.frame,
            source=dataset.source if Path(dataset.source).is_file() else None,
            name=dataset.name,
            targets=dataset.target.name,
        )
        self.tags = {
            "mlstack.version": __version__,
            "mlstack.model": model_dir.name,
            "mlstack.task": self.task,
            "mlstack.params_sha256": params_sha256,
            "mlstack.dataset.name": dataset.name,
            "mlstack.dataset.source": dataset.source,
            "mlstack.dataset.digest": self.mlflow_dataset.digest,
        }
        commit = git_commit(model_dir)
        if commit:
            self.tags["mlstack.git_commit"] = commit
        self.run_ids: list[str] = []  # every run this invocation started, top run first
        self.failure: BaseException | None = None  # the first error inside a run

    @contextmanager
    def _failing_fast(self) -> Iterator[None]:
        """Inside each `with start_run()`: on the first error, remember it and stop MLflow's
        per-request retries. The `with` blocks then each try once to end their run, and
        `end_failed_runs` does the bounded waiting (not one retry window per nesting level)."""
        try:
            yield
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc
                stop_client_retries()
            raise

    def _log_batch(self, run_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Params, metrics and tags of a run in one request, never one call per value."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, "None" if v is None else str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in self.tags.items()],
        )

    def _train_in(self, run_id: str, params: TrainerParams, label: str) -> Evaluation:
        """Fit, evaluate and log one configuration into the active run `run_id`."""
        self._log_batch(run_id, params.flat(), {})
        self.mlflow.log_input(self.mlflow_dataset, context="training")
        settings = ", ".join(f"{k}={v}" for k, v in params.hyperparameters().items())
        say(f"fitting {label} ({settings})")
        evaluation = fit_and_evaluate(self.build_estimator(params), self.split, self.task)
        self._log_batch(run_id, {}, evaluation.metrics)
        with tempfile.TemporaryDirectory() as plots:
            write_plots(evaluation, self.split, self.task, Path(plots))
            self.mlflow.log_artifacts(plots, artifact_path="plots")
        return evaluation

    def _log_model(self, evaluation: Evaluation) -> str:
        from mlflow.models import infer_signature

        from mlstack.model_requirements import sklearn_model_requirements

        X_train = self.split.X_train
        signature = infer_signature(X_train, evaluation.estimator.predict(X_train))
        info = self.mlflow.sklearn.log_model(
            sk_model=evaluation.estimator,
            name="model",
            signature=signature,
            input_example=X_train.head(5),
            skops_trusted_types=own_skops_types(evaluation.estimator),
            # Written, not inferred: inference re-imports the model in a second Python (~7 s).
            pip_requirements=sklearn_model_requirements(),
        )
        return info.model_uri

    def execute(self) -> Outcome:
        """Train (or sweep), log, register and promote. Everything happens inside the top run, so
        any failure, registration included, marks that run FAILED."""
        from mlstack.registry import register_and_promote

        mlflow = self.mlflow
        experiment = mlflow.set_experiment(self.experiment)
        mark_as_model_training(self.client, experiment)
        name = self.params.registered_model_name
        combos = self.params.sweep_combinations()
        metric = self.params.promote.metric
        run_name = f"{name}-sweep" if combos else name
        with mlflow.start_run(run_name=run_name) as top, self._failing_fast():
            top_id = top.info.run_id
            self.run_ids.append(top_id)
            if not combos:
                best_run, best = top_id, self._train_in(top_id, self.params, name)
                say("logging the model")
                model_uri = self._log_model(best)
            else:
                best_run, best = self._sweep(top_id, combos)
                # Only the best child gets a model (and so a registered version): reopen it.
                with mlflow.start_run(run_id=best_run, nested=True), self._failing_fast():
                    say(f"best of the sweep: run {best_run} ({metric}={best.metrics[metric]:.6g})")
                    model_uri = self._log_model(best)
                self._log_batch(top_id, {}, best.metrics)
                mlflow.set_tag("mlstack.best_child_run_id", best_run)
            say(f"registering {name}")
            decision = register_and_promote(
                self.client, model_uri, name, best_run, self.params.promote, best.metrics[metric]
            )
        return Outcome(
            run_id=top_id,
            experiment_id=experiment.experiment_id,
            metrics=best.metrics,
            decision=decision,
            children=len(combos),
        )

    def _sweep(self, parent_id: str, combos: list[dict[str, Any]]) -> tuple[str, Evaluation]:
        """One nested run per combination; returns the best child by the promotion metric."""
        from mlstack.evaluate import is_better

        say(f"sweep: {len(combos)} combinations of {', '.join(self.params.sweep)}")
        self._log_batch(parent_id, self.params.flat(), {})
        self.mlflow.set_tag("mlstack.sweep", json.dumps(self.params.sweep))
        metric, higher = self.params.promote.metric, self.params.promote.higher_is_better
        best: tuple[str, Evaluation] | None = None
        name = self.params.registered_model_name
        for index, combo in enumerate(combos, start=1):
            label = f"{name}-{index}"
            with (
                self.mlflow.start_run(run_name=label, nested=True) as child,
                self._failing_fast(),
            ):
                self.run_ids.append(child.info.run_id)
                evaluation = self._train_in(
                    child.info.run_id, self.params.model_copy(update=combo), label
                )
            if best is None or is_better(
                evaluation.metrics[metric], best[1].metrics[metric], higher
            ):
                best = (child.info.run_id, evaluation)
        assert best is not None
        return best


# MLflow 3.17's UI picks its GenAI or model-training view per browser (localStorage), not from the
# experiment's `mlflow.experimentKind` tag; this query parameter opens the training view
# (docs/browser-tests.md, mlflow/mlflow#24498).
TRAINING_VIEW_QUERY = "workflowType=machine_learning"


def run_link(ui_url: str, experiment_id: str, run_id: str) -> str:
    """The UI address of a run, opening in the model-training view."""
    return f"{ui_url}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW_QUERY}"


def print_summary(outcome: Outcome, ui_url: str) -> None:
    decision = outcome.decision
    link = run_link(ui_url, outcome.experiment_id, outcome.run_id)
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(outcome.metrics.items()))
    lines = [
        "",
        "=== training summary ===",
        f"run:        {outcome.run_id}"
        + (f" (sweep, {outcome.children} child runs)" if outcome.children else ""),
        f"UI:         {link}",
        f"metrics:    {metrics}",
        f"model:      {decision.name} version {decision.version}",
        f"promotion:  {decision.summary}",
        f"serve it:   models:/{decision.name}@{decision.alias}",
    ]
    print("\n".join(lines), flush=True)


def end_failed_runs(run_ids: list[str], settings: Settings) -> None:
    """After a failure: no run of ours may stay RUNNING. The server may be down right now, so
    keep trying for the retry window, then say which runs could not be marked."""
    if not run_ids:
        return
    window = settings.retry_window_seconds
    unmarked = mark_runs_failed(
        settings.tracking_uri, run_ids, window, auth=settings.tracking_auth, log=say
    )
    if unmarked:
        print(
            f"error: could not mark run(s) {', '.join(unmarked)} FAILED: the tracking server at "
            f"{settings.tracking_uri} did not answer within {window:g} s; they show RUNNING "
            "until ended (MlflowClient().set_terminated(run_id, 'FAILED'))",
            file=sys.stderr,
            flush=True,
        )
    if run_ids[0] not in unmarked:
        print(f"error: run {run_ids[0]} was marked FAILED", file=sys.stderr, flush=True)


def main(
    model_dir: Path,
    params_cls: type[TrainerParams],
    build_estimator: EstimatorBuilder,
    argv: Sequence[str] | None = None,
) -> int:
    """Entry point of every `<model>/train.py`; returns the process exit code."""
    args = parse_args(model_dir, argv)
    try:
        params, sha256 = load_params(params_cls, args.params, args.overrides)
        dataset = load_dataset(params.data, args.params.parent, str(args.params), params_cls.task)
        split = split_dataset(dataset, params.data, params_cls.task, str(args.params))
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_PARAMS
    experiment = args.experiment or params.experiment
    if args.dry_run:
        resolved = {"experiment": experiment, **params.model_dump()}
        print(json.dumps(resolved, indent=2))
        say(
            f"dry run: params valid; data {dataset.name}: {len(dataset.features)} rows, "
            f"{dataset.features.shape[1]} features; nothing was logged"
        )
        return EXIT_OK

    settings = get_settings()
    try:
        say(f"checking the tracking server at {settings.tracking_uri}")
        check_tracking_server(
            settings.tracking_uri,
            settings.connect_attempts,
            settings.connect_backoff_seconds,
            auth=settings.tracking_auth,
            log=say,
        )
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_NO_TRACKING

    # Every MLflow request of the run retries within the window (the server may be restarting).
    configure_client_retries(settings.retry_window_seconds)
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    run = TrainingRun(model_dir, params, sha256, dataset, split, build_estimator, experiment)
    try:
        outcome = run.execute()
    except Exception as exc:  # any failure once runs exist: report it, the runs are marked FAILED
        cause = run.failure or exc  # not a `with` block's failed attempt to end its run
        problem = describe_run_failure(cause, settings.tracking_uri)
        print(f"error: {problem}", file=sys.stderr, flush=True)
        end_failed_runs(run.run_ids, settings)
        return EXIT_FAILED
    print_summary(outcome, settings.effective_ui_url)
    return EXIT_OK
