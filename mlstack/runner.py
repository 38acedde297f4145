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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mlstack import __version__
from mlstack.fitting import (
    DataReport,
    EstimatorBuilder,
    FittingFailed,
    FittingProcess,
    ModelPackage,
    load_and_split,
)
from mlstack.params import ParamsError, TrainerParams, load_params
from mlstack.settings import Settings, get_settings
from mlstack.tracking import (
    TrackingUnavailable,
    check_tracking_server,
    configure_client_retries,
    describe_run_failure,
    mark_as_model_training,
    mark_runs_failed,
    retry_cut_off_answers,
    stop_client_retries,
    use_experiment,
)

if TYPE_CHECKING:
    from mlstack.registry import Champion  # imports MLflow: only once the run is under way

EXIT_OK, EXIT_FAILED, EXIT_BAD_PARAMS, EXIT_NO_TRACKING = 0, 1, 2, 3


def say(message: str) -> None:
    print(f"[mlstack] {message}", flush=True)


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
    """One trainer invocation against a reachable tracking server: it logs, in MLflow, what the
    fitting process (`mlstack.fitting`) reports, as the reports arrive."""

    def __init__(
        self,
        model_dir: Path,
        params: TrainerParams,
        params_sha256: str,
        data: DataReport,
        fitting: FittingProcess,
        experiment: str,
    ) -> None:
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient()
        self.model_dir = model_dir
        self.params = params
        self.fitting = fitting
        self.experiment = experiment
        self.task = type(params).task
        self.mlflow_dataset = mlflow.data.from_pandas(
            data.frame,
            source=data.source if Path(data.source).is_file() else None,
            name=data.name,
            targets=data.target_name,
        )
        self.tags = {
            "mlstack.version": __version__,
            "mlstack.model": model_dir.name,
            "mlstack.task": self.task,
            "mlstack.params_sha256": params_sha256,
            "mlstack.dataset.name": data.name,
            "mlstack.dataset.source": data.source,
            "mlstack.dataset.digest": self.mlflow_dataset.digest,
        }
        commit = git_commit(model_dir)
        if commit:
            self.tags["mlstack.git_commit"] = commit
        self.run_ids: list[str] = []  # every run this invocation started, top run first
        self.champion: Champion | None = None  # looked up while the model is serialised
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

    def _train_in(self, run_id: str, index: int, label: str) -> dict[str, float]:
        """Log configuration `index` into the active run `run_id` as the fitting process reports
        it: params first, then its metrics and plots. Returns the metrics."""
        from mlstack.plots import draw_plots

        _, _, params = self.fitting.receive("fitting")
        self._log_batch(run_id, params.flat(), {})
        self.mlflow.log_input(self.mlflow_dataset, context="training")
        settings = ", ".join(f"{k}={v}" for k, v in params.hyperparameters().items())
        say(f"fitting {label} ({settings})")
        _, reported, metrics, plot_data = self.fitting.receive("fitted")
        assert reported == index, (reported, index)
        self._log_batch(run_id, {}, metrics)
        with tempfile.TemporaryDirectory() as plots:
            draw_plots(plot_data, Path(plots))
            self.mlflow.log_artifacts(plots, artifact_path="plots")
        return metrics

    def _receive_model(self) -> ModelPackage:
        """Wait for the packaged model, meanwhile importing what logging and registering it need
        and looking up the current champion (the fitting process is importing skops and
        serialising: seconds)."""
        import mlflow.models  # noqa: F401

        import mlstack.model_requirements
        import mlstack.sklearn_flavor  # noqa: F401
        from mlstack.registry import look_up_champion

        name, promote = self.params.registered_model_name, self.params.promote
        self.champion = look_up_champion(self.client, name, promote)
        _, package = self.fitting.receive("model")
        return package

    def _log_model(self, package: ModelPackage) -> str:
        from mlflow.models import Model, infer_signature

        from mlstack.model_requirements import sklearn_model_requirements
        from mlstack.sklearn_flavor import SkopsFileFlavor

        X_train = package.X_train
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=SkopsFileFlavor(package),
            signature=infer_signature(X_train, package.train_predictions),
            input_example=X_train.head(5),
            # Written, not inferred: inference re-imports the model in a second Python (~7 s).
            pip_requirements=sklearn_model_requirements(),
            # The fitting process already loaded the saved model back and predicted the example
            # (fitting.package_model); here it would import scikit-learn for the same check.
            validate_serving_input=False,
        )
        return info.model_uri

    def execute(self) -> Outcome:
        """Log (or sweep), register and promote. Everything happens inside the top run, so
        any failure, registration included, marks that run FAILED."""
        from mlstack.registry import register_and_promote

        mlflow = self.mlflow
        experiment = use_experiment(mlflow, self.experiment)
        mark_as_model_training(self.client, experiment)
        name = self.params.registered_model_name
        combos = self.params.sweep_combinations()
        metric = self.params.promote.metric
        run_name = f"{name}-sweep" if combos else name
        with mlflow.start_run(run_name=run_name) as top, self._failing_fast():
            top_id = top.info.run_id
            self.run_ids.append(top_id)
            if not combos:
                best_run, best = top_id, self._train_in(top_id, 0, name)
                package = self._receive_model()
                say("logging the model")
                model_uri = self._log_model(package)
            else:
                child_runs = self._sweep(top_id, len(combos))
                package = self._receive_model()
                best_run, best = child_runs[package.index]
                # Only the best child gets a model (and so a registered version): reopen it.
                with mlflow.start_run(run_id=best_run, nested=True), self._failing_fast():
                    say(f"best of the sweep: run {best_run} ({metric}={best[metric]:.6g})")
                    model_uri = self._log_model(package)
                self._log_batch(top_id, {}, best)
                mlflow.set_tag("mlstack.best_child_run_id", best_run)
            say(f"registering {name}")
            decision = register_and_promote(
                self.client,
                model_uri,
                name,
                best_run,
                self.params.promote,
                best[metric],
                self.champion,
            )
        return Outcome(
            run_id=top_id,
            experiment_id=experiment.experiment_id,
            metrics=best,
            decision=decision,
            children=len(combos),
        )

    def _sweep(self, parent_id: str, count: int) -> list[tuple[str, dict[str, float]]]:
        """One nested run per combination, in the fitting process's order: (run id, metrics)."""
        say(f"sweep: {count} combinations of {', '.join(self.params.sweep)}")
        self._log_batch(parent_id, self.params.flat(), {})
        self.mlflow.set_tag("mlstack.sweep", json.dumps(self.params.sweep))
        name = self.params.registered_model_name
        child_runs = []
        for index in range(count):
            label = f"{name}-{index + 1}"
            with (
                self.mlflow.start_run(run_name=label, nested=True) as child,
                self._failing_fast(),
            ):
                self.run_ids.append(child.info.run_id)
                metrics = self._train_in(child.info.run_id, index, label)
            child_runs.append((child.info.run_id, metrics))
        return child_runs


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
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_PARAMS
    experiment = args.experiment or params.experiment
    if args.dry_run:
        return dry_run(params, args.params, experiment)
    with tempfile.TemporaryDirectory(prefix="mlstack-train-") as workdir:
        fitting = FittingProcess(params, args.params, build_estimator, Path(workdir))
        try:
            return _train(model_dir, params, sha256, experiment, fitting)
        finally:
            fitting.close()


def run(
    model_dir: Path, params_cls: type[TrainerParams], build_estimator: EstimatorBuilder
) -> NoReturn:
    """What every `<model>/train.py` calls: `main` on the command line, then exit with its code.

    The exit skips CPython's finalisation of the ~2,000 modules MLflow, pandas and matplotlib
    load: about 0.5 s of a 4-5 s run, measured (docs/training.md). Nothing needs it: the atexit
    handlers still run (MLflow's, logging's) and the streams are flushed, as at any exit. An
    exception escaping `main` exits the ordinary way."""
    exit_without_finalising(main(model_dir, params_cls, build_estimator))


def exit_without_finalising(code: int) -> NoReturn:
    import atexit
    import logging
    import os

    atexit._run_exitfuncs()  # what interpreter shutdown would run first
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def dry_run(params: TrainerParams, params_path: Path, experiment: str) -> int:
    """Validate params and data, print the resolved params; nothing is logged."""
    try:
        dataset, _ = load_and_split(params, params_path)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_PARAMS
    print(json.dumps({"experiment": experiment, **params.model_dump()}, indent=2))
    say(
        f"dry run: params valid; data {dataset.name}: {len(dataset.features)} rows, "
        f"{dataset.features.shape[1]} features; nothing was logged"
    )
    return EXIT_OK


def _train(
    model_dir: Path,
    params: TrainerParams,
    sha256: str,
    experiment: str,
    fitting: FittingProcess,
) -> int:
    """The runner's side of a run, while `fitting` loads the data and fits beside it."""
    settings = get_settings()
    # Every MLflow request of the run retries within the window (the server may be restarting).
    configure_client_retries(settings.retry_window_seconds)
    # While the fitting process imports scikit-learn and loads the data (mlstack.fitting), this
    # one imports MLflow and matplotlib: on two cores the two sides take about as long (measured,
    # docs/training.md). What it needs only at the end is imported while it waits for the model
    # (TrainingRun._receive_model).
    import mlflow
    import mlflow.data.pandas_dataset

    import mlstack.plots  # noqa: F401

    retry_cut_off_answers()

    try:
        report = fitting.receive("data", "bad-data")
    except FittingFailed as exc:  # no run exists yet: nothing to mark
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if report[0] == "bad-data":
        print(f"error: {report[1]}", file=sys.stderr, flush=True)
        return EXIT_BAD_PARAMS
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

    mlflow.set_tracking_uri(settings.tracking_uri)
    run = TrainingRun(model_dir, params, sha256, report[1], fitting, experiment)
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
