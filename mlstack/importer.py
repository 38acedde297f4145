"""`mlstack import SOURCE`: bring an existing MLflow's history into the platform.

Sources (what the setups this platform replaces use):

- a file store folder (`./mlruns`): MLflow's own `mlflow migrate-filestore` turns it into a SQLite
  database in a temporary folder first (MLflow 3.17 opens a file store only with
  `MLFLOW_ALLOW_FILE_STORE=true`, and its migration tool is the supported way out); its artifacts
  stay where they are and are read from there;
- a SQLite database (`mlflow.db` or `sqlite:///...`) with its artifact folder (`--artifacts DIR`
  when the paths recorded in the database no longer point at it: a moved folder, or the
  `mlflow-artifacts:/` URIs of a server's `./mlartifacts`);
- another tracking server (`http://...`): read through its API, artifacts downloaded through it.

Everything is copied through MLflow's client into the platform's tracking server, as a user's
client would write it: experiments (by name, with tags), active runs (name, status, start and end
times, params, tags, every metric's full history, artifacts), logged models (params, tags,
artifacts, status), registered models (tags, description) with their versions (tags, description,
pointing at the imported logged model or run) and aliases. Run and model ids are new (MLflow
assigns them); each imported run, logged model and version carries a tag naming the source id, which
makes the import idempotent: a second run finds them and imports nothing twice; one that stopped
half-way is finished (a run left incomplete is deleted and imported again). At the end, counts of
the source and of what the platform holds for it are compared (runs, params, metric points,
artifact files, logged models, versions, aliases): exit 1 when they differ.

Not imported: deleted runs and experiments, traces and GenAI objects, dataset inputs, 2.x stages
(deprecated in MLflow 3; use aliases).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlstack.platform.common import PlatformError, Say, reporting_errors, say
from mlstack.platform.target import add_target_options, target_of

RUN_TAG = "mlstack.import.source_run"
MODEL_TAG = "mlstack.import.source_model"
VERSION_TAG = "mlstack.import.source_version"
COMPLETE_TAG = "mlstack.import.complete"
PAGE = 500
METRIC_BATCH = 1000
PARAM_BATCH = 100
MIGRATE_TIMEOUT_SECONDS = 1800


# =============================================================================================
# Sources
# =============================================================================================


@dataclass
class Source:
    """Where history comes from: a tracking URI MLflow's client reads, and how to reach artifacts."""

    uri: str
    description: str
    artifacts_dir: Path | None = None  # a local artifact folder that replaces recorded roots
    cleanup: Callable[[], None] = lambda: None

    def local_artifacts(self, artifact_uri: str) -> Path | None:
        """The local folder holding an artifact URI's files (None: download through MLflow)."""
        parsed = urlparse(artifact_uri)
        if parsed.scheme == "mlflow-artifacts" and self.artifacts_dir is not None:
            return self.artifacts_dir / parsed.path.lstrip("/")
        if parsed.scheme in ("", "file"):
            recorded = Path(parsed.path)
            if recorded.is_dir():
                return recorded
            if self.artifacts_dir is not None:
                # A moved folder: find the recorded path's tail (`<exp>/<run>/artifacts` or
                # `<exp>/models/<id>/artifacts`) under the given one.
                parts = recorded.parts
                for start in range(len(parts)):
                    candidate = self.artifacts_dir.joinpath(*parts[start:])
                    if candidate.is_dir():
                        return candidate
            return recorded  # missing: counted as no files, and the verification says so
        return None


def open_source(source: str, artifacts: Path | None, say: Say) -> Source:
    if source.startswith(("http://", "https://")):
        return Source(source, f"tracking server {source}")
    if source.startswith("sqlite:///"):
        return upgraded_copy(Path(source.removeprefix("sqlite:///")), artifacts, say)
    path = Path(source).expanduser().resolve()
    if path.is_file():
        return upgraded_copy(path, artifacts, say)
    if path.is_dir():
        return migrated_file_store(path, artifacts, say)
    raise PlatformError(
        f"source {source!r}: not a folder (file store), a SQLite file, sqlite:///... or http(s)://"
    )


def mlflow_cli(*args: str, what: str) -> None:
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([sys.executable, "-m", "mlflow", *args], capture_output=True,
                            text=True, env=env, check=False, timeout=MIGRATE_TIMEOUT_SECONDS)  # fmt: skip
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-3000:]
        raise PlatformError(f"{what} failed:\n{detail}")


def upgraded_copy(database: Path, artifacts: Path | None, say: Say) -> Source:
    """A copy of a SQLite database, brought to this MLflow's schema (`mlflow db upgrade`): an
    older MLflow's database is read, and the source itself is never written."""
    if not database.is_file():
        raise PlatformError(f"SQLite database {database} not found")
    scratch = tempfile.TemporaryDirectory(prefix="mlstack-import-")
    copy = Path(scratch.name) / "mlflow.db"
    shutil.copyfile(database, copy)
    say(f"import: reading a copy of {database} (`mlflow db upgrade` on the copy)")
    try:
        mlflow_cli(
            "db", "upgrade", f"sqlite:///{copy}", what=f"mlflow db upgrade of a copy of {database}"
        )
    except PlatformError:
        scratch.cleanup()
        raise
    return Source(f"sqlite:///{copy}", f"SQLite {database}", artifacts, cleanup=scratch.cleanup)


def migrated_file_store(folder: Path, artifacts: Path | None, say: Say) -> Source:
    """`mlflow migrate-filestore` of `folder` (an `mlruns` folder) into a temporary SQLite file."""
    if not any(folder.glob("*/meta.yaml")):
        raise PlatformError(f"{folder} holds no MLflow file store (no <experiment>/meta.yaml)")
    scratch = tempfile.TemporaryDirectory(prefix="mlstack-import-")
    database = Path(scratch.name) / "mlflow.db"
    say(f"import: converting the file store {folder} with `mlflow migrate-filestore`")
    try:
        mlflow_cli("migrate-filestore", "--no-progress", "--source", str(folder),
                   "--target", f"sqlite:///{database}", what=f"mlflow migrate-filestore of {folder}")  # fmt: skip
    except PlatformError as error:
        scratch.cleanup()
        # MLflow 3.17's tool stops at the duplicate metric lines that logging a model in a run
        # writes to the file store itself (UNIQUE constraint failed: metrics...). MLflow's
        # FileStore still reads such a store: use it directly.
        lines = [line for line in str(error).splitlines() if "Error" in line] or ["failed"]
        first = lines[-1][:200]
        say(f"import: migrate-filestore refused ({first}); reading the file store directly")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        return Source(folder.as_uri(), f"file store {folder}", artifacts or folder)
    return Source(
        f"sqlite:///{database}",
        f"file store {folder}",
        artifacts or folder,
        cleanup=scratch.cleanup,
    )


# =============================================================================================
# Copying
# =============================================================================================


@dataclass
class Tally:
    imported: int = 0
    present: int = 0

    def line(self, name: str) -> str:
        return f"{name}: {self.imported} imported, {self.present} already there"


@dataclass
class Summary:
    experiments: Tally = field(default_factory=Tally)
    runs: Tally = field(default_factory=Tally)
    logged_models: Tally = field(default_factory=Tally)
    registered_models: Tally = field(default_factory=Tally)
    versions: Tally = field(default_factory=Tally)
    aliases: int = 0
    problems: list[str] = field(default_factory=list)


def pages(call: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = call(**kwargs, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def files_under(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


class Importer:
    def __init__(self, source: Source, destination_uri: str, say: Say) -> None:
        import mlflow
        from mlflow import MlflowClient

        # Some reads of a file store's registry consult the process-wide tracking URI (and would
        # create ./mlflow.db, MLflow's default): point it at the platform.
        mlflow.set_tracking_uri(destination_uri)
        mlflow.set_registry_uri(destination_uri)
        self.source = source
        self.src = MlflowClient(tracking_uri=source.uri, registry_uri=source.uri)
        self.dst = MlflowClient(tracking_uri=destination_uri, registry_uri=destination_uri)
        self.say = say
        self.summary = Summary()
        self.experiments: dict[str, str] = {}  # source id -> platform id
        self.runs: dict[str, str] = {}
        self.models: dict[str, str] = {}
        self.version_map: dict[str, dict[str, str]] = {}  # model -> source version -> platform

    # --- artifacts -------------------------------------------------------------------------

    def artifact_folder(self, uri: str, download: Callable[[str], str]) -> tuple[Path | None, Any]:
        """(local folder with the files, a TemporaryDirectory to keep alive or None)."""
        local = self.source.local_artifacts(uri)
        if local is not None:
            return local, None
        scratch = tempfile.TemporaryDirectory(prefix="mlstack-import-artifacts-")
        return Path(download(scratch.name)), scratch

    def download(self, artifact_uri: str, into: str) -> str:
        from mlflow.artifacts import download_artifacts

        return str(
            download_artifacts(
                artifact_uri=artifact_uri, dst_path=into, tracking_uri=self.source.uri
            )
        )

    # --- experiments and runs ----------------------------------------------------------------

    def experiment(self, source_experiment: Any) -> str:
        existing = self.dst.get_experiment_by_name(source_experiment.name)
        if existing is not None and existing.lifecycle_stage == "active":
            self.summary.experiments.present += 1
            experiment_id = str(existing.experiment_id)
        elif existing is not None:
            raise PlatformError(
                f"experiment {source_experiment.name!r} is deleted on the platform: restore it "
                "(MLflow UI or client) or gc it, then import again"
            )
        else:
            experiment_id = str(self.dst.create_experiment(source_experiment.name))
            self.summary.experiments.imported += 1
        for key, value in source_experiment.tags.items():
            if not key.startswith("mlflow."):
                self.dst.set_experiment_tag(experiment_id, key, value)
        return experiment_id

    def imported_runs(self, experiment_id: str) -> dict[str, Any]:
        """source run id -> platform run, for runs an earlier import made (any state)."""
        from mlflow.entities import ViewType

        found = {}
        for run in pages(
            self.dst.search_runs,
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{RUN_TAG}` != ''",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=PAGE,
        ):
            found[run.data.tags[RUN_TAG]] = run
        return found

    def run(self, source_run: Any, experiment_id: str, already: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        source_id = source_run.info.run_id
        previous = already.get(source_id)
        if previous is not None and previous.data.tags.get(COMPLETE_TAG) == "true":
            self.runs[source_id] = previous.info.run_id
            self.summary.runs.present += 1
            return
        if previous is not None:  # an import that stopped half-way: start that run again
            self.dst.delete_run(previous.info.run_id)
        tags = {k: v for k, v in source_run.data.tags.items() if not k.startswith("mlstack.import")}
        tags[RUN_TAG] = source_id
        created = self.dst.create_run(
            experiment_id,
            start_time=source_run.info.start_time,
            tags=tags,
            run_name=source_run.info.run_name,
        )
        run_id = created.info.run_id
        params = [Param(k, v) for k, v in source_run.data.params.items()]
        for start in range(0, len(params), PARAM_BATCH):
            self.dst.log_batch(run_id, params=params[start : start + PARAM_BATCH])
        history = [
            Metric(key, value, timestamp, step)
            for key in source_run.data.metrics
            for value, timestamp, step in self.points(self.src, source_id, key)
        ]
        for start in range(0, len(history), METRIC_BATCH):
            self.dst.log_batch(run_id, metrics=history[start : start + METRIC_BATCH])
        folder, scratch = self.artifact_folder(
            source_run.info.artifact_uri,
            lambda into: self.download(source_run.info.artifact_uri, into),
        )
        try:
            if files_under(folder):
                self.dst.log_artifacts(run_id, str(folder))
        finally:
            if scratch is not None:
                scratch.cleanup()
        self.dst.set_terminated(run_id, source_run.info.status, source_run.info.end_time)
        self.dst.set_tag(run_id, COMPLETE_TAG, "true")
        self.runs[source_id] = run_id
        self.summary.runs.imported += 1

    # --- logged models -----------------------------------------------------------------------

    def logged_model(self, model: Any, experiment_id: str, already: dict[str, Any]) -> None:
        source_id = model.model_id
        previous = already.get(source_id)
        if previous is not None and str(previous.status) in ("READY", "LoggedModelStatus.READY"):
            self.models[source_id] = previous.model_id
            self.summary.logged_models.present += 1
            return
        if previous is not None:
            self.dst.delete_logged_model(previous.model_id)
        tags = {k: v for k, v in model.tags.items() if not k.startswith("mlstack.import")}
        tags[MODEL_TAG] = source_id
        created = self.dst.create_logged_model(
            experiment_id=experiment_id,
            name=model.name,
            source_run_id=self.runs.get(model.source_run_id or ""),
            tags=tags,
            params=dict(model.params or {}),
            model_type=model.model_type,
        )
        folder, scratch = self.artifact_folder(
            model.artifact_location,
            lambda into: self.download(model.artifact_location, into),
        )
        try:
            if files_under(folder):
                self.dst.log_model_artifacts(created.model_id, str(folder))
        finally:
            if scratch is not None:
                scratch.cleanup()
        self.dst.finalize_logged_model(created.model_id, "READY")
        self.models[source_id] = created.model_id
        self.summary.logged_models.imported += 1

    def imported_models(self, experiment_id: str) -> dict[str, Any]:
        found = {}
        for model in pages(self.dst.search_logged_models, experiment_ids=[experiment_id]):
            if MODEL_TAG in model.tags:
                found[model.tags[MODEL_TAG]] = model
        return found

    # --- registry ----------------------------------------------------------------------------

    def version_source(self, version: Any) -> tuple[str, str | None]:
        """(source URI on the platform, model id) for a source model version."""
        source = version.source or ""
        if source.startswith("models:/m-"):
            old = source.removeprefix("models:/").split("/")[0]
            if old in self.models:
                return f"models:/{self.models[old]}", self.models[old]
        if source.startswith("runs:/"):
            old_run, _, path = source.removeprefix("runs:/").partition("/")
            if old_run in self.runs:
                return f"runs:/{self.runs[old_run]}/{path}", None
        model_id = getattr(version, "model_id", None)
        if model_id and model_id in self.models:
            return f"models:/{self.models[model_id]}", self.models[model_id]
        raise PlatformError(
            f"model {version.name} version {version.version}: its source {source!r} is not "
            "among the imported runs and logged models"
        )

    def registered_model(self, model: Any) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.dst.get_registered_model(model.name)
            self.summary.registered_models.present += 1
        except MlflowException:
            self.dst.create_registered_model(model.name, description=model.description)
            self.summary.registered_models.imported += 1
        for key, value in (model.tags or {}).items():
            self.dst.set_registered_model_tag(model.name, key, value)
        # A platform version is this source version when it carries its number and points at
        # the same imported logged model or run (two sources can both have a "v1").
        present = {
            (v.tags[VERSION_TAG], v.source): str(v.version)
            for v in pages(
                self.dst.search_model_versions,
                filter_string=f"name = '{model.name}'",
                max_results=PAGE,
            )
            if VERSION_TAG in (v.tags or {})
        }
        mapping: dict[str, str] = {}
        source_versions = sorted(
            pages(
                self.src.search_model_versions,
                filter_string=f"name = '{model.name}'",
                max_results=PAGE,
            ),
            key=lambda v: int(v.version),
        )
        for version in source_versions:
            uri, model_id = self.version_source(version)
            number = str(version.version)
            if (number, uri) in present:
                mapping[number] = present[(number, uri)]
                self.summary.versions.present += 1
                continue
            tags = {**(version.tags or {}), VERSION_TAG: number}
            created = self.dst.create_model_version(
                model.name,
                uri,
                run_id=self.runs.get(version.run_id or ""),
                tags=tags,
                description=version.description,
                model_id=model_id,
            )
            mapping[number] = str(created.version)
            self.summary.versions.imported += 1
        self.version_map[model.name] = mapping
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            self.dst.set_registered_model_alias(model.name, alias, mapping[str(version)])
            self.summary.aliases += 1

    # --- the whole import and its check -------------------------------------------------------

    def run_all(self) -> Summary:
        from mlflow.entities import ViewType

        experiments = list(
            pages(self.src.search_experiments, view_type=ViewType.ACTIVE_ONLY, max_results=PAGE)
        )
        for experiment in experiments:
            source_runs = list(
                pages(
                    self.src.search_runs,
                    experiment_ids=[experiment.experiment_id],
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=PAGE,
                )
            )
            source_models = list(
                pages(self.src.search_logged_models, experiment_ids=[experiment.experiment_id])
            )
            if not source_runs and not source_models and experiment.name == "Default":
                continue
            experiment_id = self.experiment(experiment)
            self.experiments[experiment.experiment_id] = experiment_id
            already = self.imported_runs(experiment_id)
            self.say(f"import: experiment {experiment.name!r}: {len(source_runs)} runs")
            for source_run in sorted(source_runs, key=lambda r: r.info.start_time or 0):
                self.run(source_run, experiment_id, already)
            present = self.imported_models(experiment_id)
            for model in source_models:  # a search finds no deleted logged models
                self.logged_model(model, experiment_id, present)
        registered = list(pages(self.src.search_registered_models, max_results=PAGE))
        for model in registered:
            self.say(f"import: registered model {model.name!r}")
            self.registered_model(model)
        self.summary.problems = self.verify(experiments, registered)
        return self.summary

    def verify(self, experiments: list[Any], registered: list[Any]) -> list[str]:
        """Counts of the source against what the platform holds for it."""
        from mlflow.entities import ViewType

        problems: list[str] = []
        for experiment in experiments:
            if experiment.experiment_id not in self.experiments:
                continue
            source_runs = {
                r.info.run_id: r
                for r in pages(
                    self.src.search_runs,
                    experiment_ids=[experiment.experiment_id],
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=PAGE,
                )
            }
            imported = self.imported_runs(self.experiments[experiment.experiment_id])
            missing = set(source_runs) - set(imported)
            if missing:
                problems.append(f"experiment {experiment.name!r}: {len(missing)} runs missing")
            for source_id in set(source_runs) & set(imported):
                problems += self.run_problems(source_runs[source_id], imported[source_id])
        for model in registered:
            mapping = self.version_map.get(model.name, {})
            platform = {
                str(v.version): v
                for v in pages(
                    self.dst.search_model_versions,
                    filter_string=f"name = '{model.name}'",
                    max_results=PAGE,
                )
            }
            for version in pages(self.src.search_model_versions,
                                 filter_string=f"name = '{model.name}'", max_results=PAGE):  # fmt: skip
                held = platform.get(mapping.get(str(version.version), ""))
                if held is None or (held.tags or {}).get(VERSION_TAG) != str(version.version):
                    problems.append(f"model {model.name}: version {version.version} missing")
            target_aliases = self.dst.get_registered_model(model.name).aliases or {}
            for alias, version in (model.aliases or {}).items():
                if str(target_aliases.get(alias)) != mapping.get(str(version)):
                    problems.append(f"model {model.name}: @{alias} is not on source v{version}")
        return problems

    def run_problems(self, source: Any, platform: Any) -> list[str]:
        name = f"run {source.info.run_id}"
        problems = []
        if source.data.params != platform.data.params:
            problems.append(f"{name}: params differ")
        for key in source.data.metrics:
            want = self.points(self.src, source.info.run_id, key)
            have = self.points(self.dst, platform.info.run_id, key)
            if want != have:
                problems.append(f"{name}: metric {key}: {len(have)} points, source {len(want)}")
        want_files = self.count_files(self.src, source.info.run_id, source.info.artifact_uri)
        have_files = self.count_files(self.dst, platform.info.run_id, None)
        if want_files != have_files:
            problems.append(f"{name}: {have_files} artifact files, source {want_files}")
        if (source.info.status, source.info.end_time) != (
            platform.info.status,
            platform.info.end_time,
        ):
            problems.append(f"{name}: status or end time differs")
        return problems

    @staticmethod
    def points(client: Any, run_id: str, key: str) -> list[tuple[float, int, int]]:
        """A metric's distinct (value, timestamp, step) points, in order. A file store can hold
        a point twice (MLflow 3 writes a run's metrics again when a model is logged in it); a
        database keeps it once."""
        return sorted(
            {(m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, key)}
        )

    def count_files(self, client: Any, run_id: str, local_uri: str | None) -> int:
        if local_uri is not None:
            local = self.source.local_artifacts(local_uri)
            if local is not None:
                return len(files_under(local))

        def walk(path: str) -> int:
            total = 0
            for entry in client.list_artifacts(run_id, path or None):
                total += walk(entry.path) if entry.is_dir else 1
            return total

        return walk("")


def import_history(
    source_spec: str, artifacts: Path | None, destination_uri: str, say: Say
) -> Summary:
    source = open_source(source_spec, artifacts, say)
    try:
        say(f"import: {source.description} -> {destination_uri}")
        summary = Importer(source, destination_uri, say).run_all()
    finally:
        source.cleanup()
    for name in ("experiments", "runs", "logged_models", "registered_models", "versions"):
        say(f"import: {getattr(summary, name).line(name.replace('_', ' '))}")
    say(f"import: aliases: {summary.aliases} set")
    if summary.problems:
        raise PlatformError(
            "the platform does not hold everything the source has:\n  "
            + "\n  ".join(summary.problems)
        )
    say("import: verified: runs, params, metric histories, artifact files, versions and aliases")
    return summary


# =============================================================================================
# Command line
# =============================================================================================


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import an existing MLflow (./mlruns, a SQLite mlflow.db, a tracking server)",
        description="Copy experiments, runs (params, metric histories, tags, artifacts), logged "
        "models and registered models with versions and aliases from another MLflow into the "
        "platform. Idempotent; counts are verified at the end.",
    )
    parser.add_argument(
        "source", help="an mlruns folder, a SQLite file (or sqlite:///PATH), or http(s)://SERVER"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="the source's artifact folder, when the paths recorded in its database do not "
        "point at it (a moved folder; a server's ./mlartifacts for mlflow-artifacts:/ URIs)",
    )
    add_target_options(parser)
    parser.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    def run() -> None:
        if args.artifacts is not None and not args.artifacts.is_dir():
            raise PlatformError(f"--artifacts {args.artifacts}: no such folder")
        target = target_of(args)
        import_history(args.source, args.artifacts, target.tracking_uri(), say)

    return reporting_errors("mlstack import", run)
