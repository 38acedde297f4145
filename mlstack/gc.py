"""`mlstack gc`: permanently delete what users deleted, and (with `--orphans`) objects nothing uses.

What goes, on either platform (`--compose` or the native `--state-dir`):

- runs deleted more than `--older-than` ago: their rows (metrics, params, tags, latest metrics:
  every table whose foreign key points at `runs`, read from PostgreSQL's catalog) and their
  artifact folder;
- logged models (MLflow 3.x) deleted that long ago, and those of experiments that go: their rows
  (their metrics, params and tags cascade) and their artifact folder;
- experiments deleted that long ago once nothing of theirs is left: their tags and row;
- with `--orphans`: every object under MLflow's artifacts root that no run, logged model, model
  version or trace points into, and that is older than `--older-than`.

Never touched: anything a registered model version uses (its `storage_location`, and the run it was
registered from), whether or not an alias holds it; objects outside MLflow's artifacts root.

`mlflow gc` does most of the row work, but does not page past 1,000 objects, leaves 3.x logged
models and never sweeps orphans (mlflow#14654, #17240, #12917); and on the Compose stack neither the
database nor the bucket is reachable from the host. So the rows are deleted with SQL through the
platform's own `psql` (one transaction), the objects through the platform's object store (every
page of the listing, batched deletes). Objects go first: a gc that stops half-way leaves rows that
the next run finishes, never rows pointing at missing files that nobody will clean.

The bucket is listed BEFORE the database is read: an object uploaded after the listing is not a
candidate, and one listed before belongs to a row that the later read sees. Exit codes: 0 done,
1 failure (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlstack.platform.common import Say, reporting_errors, say
from mlstack.platform.database import Database, quote_literal
from mlstack.platform.objects import FolderStore, ObjectStore, StoredObject
from mlstack.platform.target import Target, add_target_options, target_of

DURATION = re.compile(r"(\d+)([dhms])")
SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# The tag MLflow keeps a trace's artifact folder in.
TRACE_LOCATION_TAG = "mlflow.artifactLocation"


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `1d12h`, `90m`, `0s` -> seconds; argparse's error on anything else."""
    if not text or DURATION.sub("", text) != "":
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: digits and a unit (d, h, m, s), e.g. 30d, 12h, 1d12h, 0s"
        )
    return float(sum(int(n) * SECONDS[unit] for n, unit in DURATION.findall(text)))


# =============================================================================================
# Where an MLflow artifact URI lives in the platform's object store
# =============================================================================================


def store_prefix(uri: str | None, store: ObjectStore) -> str | None:
    """The key prefix (ending in `/`) of an artifact URI in `store`; None when it lies elsewhere.

    `mlflow-artifacts:/1/abc/artifacts` (the proxied server) -> `<artifacts root>1/abc/artifacts/`;
    `s3://<this bucket>/k` -> `k/`; for the folder store, a `file:` URI or path inside it.
    """
    if not uri:
        return None
    parsed = urlparse(uri)
    path: str | None = None
    if parsed.scheme == "mlflow-artifacts":
        path = store.artifacts_root + parsed.path.lstrip("/")
    elif parsed.scheme == "s3" and parsed.netloc == getattr(store, "bucket", None):
        path = parsed.path.lstrip("/")
    elif parsed.scheme in ("", "file") and isinstance(store, FolderStore):
        try:
            path = Path(parsed.path).resolve().relative_to(store.root.resolve()).as_posix()
        except ValueError:
            return None
    if path is None:
        return None
    path = path.strip("/")
    return f"{path}/" if path else ""


def under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(prefix) for prefix in prefixes)


# =============================================================================================
# The plan: what would go, read from the database and one listing of the store
# =============================================================================================


@dataclass
class Kind:
    """One kind of thing that goes: how many, and the objects that go with them."""

    name: str
    items: list[str] = field(default_factory=list)
    objects: list[StoredObject] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(found.size for found in self.objects)

    def line(self) -> str:
        count = f"{len(self.items)} {self.name}" if self.name != "orphans" else "orphans"
        return f"{count}: {len(self.objects)} objects, {self.bytes} bytes"


@dataclass
class Plan:
    runs: Kind
    logged_models: Kind
    experiments: Kind
    orphans: Kind
    kept: list[str]  # why something deleted stays (a registered version uses it)

    @property
    def kinds(self) -> list[Kind]:
        return [self.runs, self.logged_models, self.experiments, self.orphans]

    def keys(self) -> list[str]:
        return sorted({found.key for kind in self.kinds for found in kind.objects})


def rows(database: Database, sql: str) -> list[list[str]]:
    return database.query(sql)


def in_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(quote_literal(v) for v in sorted(values)) + ")"


def referencing(database: Database, table: str) -> list[tuple[str, str, str]]:
    """(child table, child column, delete rule) of every foreign key pointing at `table`."""
    sql = (
        "SELECT c.conrelid::regclass::text, a.attname, c.confdeltype FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        f" WHERE c.contype = 'f' AND c.confrelid = {quote_literal('public.' + table)}::regclass"
        " AND array_length(c.conkey, 1) = 1"
    )
    return [(child, column, rule) for child, column, rule in rows(database, sql)]


def table_exists(database: Database, table: str) -> bool:
    sql = f"SELECT to_regclass({quote_literal('public.' + table)}) IS NOT NULL"
    return rows(database, sql) == [["t"]]


def plan_gc(target: Target, older_than: float, orphans: bool) -> Plan:
    database, store = target.database, target.objects
    listing = store.stat()  # first: see the module docstring
    cutoff_ms = int((time.time() - older_than) * 1000)
    has_logged_models = table_exists(database, "logged_models")

    # What registered versions use: never deleted.
    versions = rows(database, "SELECT name, version, run_id, storage_location FROM model_versions")
    protected_prefixes = {p for *_, loc in versions if (p := store_prefix(loc, store)) is not None}
    protected_runs = {run_id for _, _, run_id, _ in versions if run_id}

    deleted_runs = rows(
        database,
        "SELECT run_uuid, artifact_uri, experiment_id FROM runs WHERE lifecycle_stage = 'deleted'"
        f" AND COALESCE(deleted_time, 0) <= {cutoff_ms}",
    )
    deleted_experiments = {
        experiment_id
        for (experiment_id,) in rows(
            database,
            "SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'deleted'"
            f" AND COALESCE(last_update_time, 0) <= {cutoff_ms}",
        )
    }
    kept: list[str] = []
    runs = Kind("runs")
    run_prefixes: dict[str, str | None] = {}
    for run_id, uri, _ in deleted_runs:
        if run_id in protected_runs:
            kept.append(f"run {run_id}: a registered model version was made from it")
            continue
        runs.items.append(run_id)
        run_prefixes[run_id] = store_prefix(uri, store)

    logged_models = Kind("logged models")
    model_prefixes: dict[str, str | None] = {}
    if has_logged_models:
        candidates = rows(
            database,
            "SELECT model_id, artifact_location, experiment_id, lifecycle_stage,"
            " COALESCE(last_updated_timestamp_ms, 0) FROM logged_models",
        )
        for model_id, location, experiment_id, stage, updated_ms in candidates:
            prefix = store_prefix(location, store)
            with_experiment = experiment_id in deleted_experiments
            if not (with_experiment or (stage == "deleted" and int(updated_ms) <= cutoff_ms)):
                continue
            if prefix is not None and (
                under(prefix, protected_prefixes)
                or any(p.startswith(prefix) for p in protected_prefixes)
            ):
                kept.append(f"logged model {model_id}: a registered model version uses it")
                continue
            logged_models.items.append(model_id)
            model_prefixes[model_id] = prefix

    # An experiment goes when nothing of it stays: every run and logged model goes with it, and no
    # other table that points at it without cascading (traces' spans, scorers' configs) holds rows.
    experiments = Kind("experiments")
    going_runs, going_models = set(runs.items), set(logged_models.items)
    # Rows that cascade from a logged model (its metrics, params, tags) go with it.
    with_models = (
        {child for child, _, rule in referencing(database, "logged_models") if rule == "c"}
        if has_logged_models
        else set()
    )
    owned = {"runs", "logged_models", "experiment_tags", *with_models}
    blockers = [
        (child, column)
        for child, column, rule in referencing(database, "experiments")
        if rule in ("a", "r") and child not in owned
    ]
    for experiment_id in sorted(deleted_experiments):
        literal = quote_literal(experiment_id)
        staying_runs = {
            r
            for (r,) in rows(database, f"SELECT run_uuid FROM runs WHERE experiment_id = {literal}")
        } - going_runs
        staying_models = (
            {
                m
                for (m,) in rows(
                    database, f"SELECT model_id FROM logged_models WHERE experiment_id = {literal}"
                )
            }
            - going_models
            if has_logged_models
            else set()
        )
        held = [
            child
            for child, column in blockers
            if rows(database, f"SELECT 1 FROM {child} WHERE {column} = {literal} LIMIT 1")
        ]
        if staying_runs or staying_models or held:
            what = [f"{len(staying_runs)} runs"] * bool(staying_runs)
            what += [f"{len(staying_models)} logged models"] * bool(staying_models)
            what += held
            kept.append(f"experiment {experiment_id}: still holds {', '.join(what)}")
            continue
        experiments.items.append(experiment_id)

    # Objects: each goes with the first kind whose folder holds it; protected ones never.
    claimed: set[str] = set()
    for kind, prefixes in ((runs, run_prefixes), (logged_models, model_prefixes)):
        folders = [p for p in prefixes.values() if p]
        for found in listing:
            if found.key in claimed or under(found.key, protected_prefixes):
                continue
            if under(found.key, folders):
                kind.objects.append(found)
                claimed.add(found.key)

    orphan_kind = Kind("orphans")
    if orphans:
        live = live_prefixes(database, store, has_logged_models)
        keep = live | protected_prefixes
        cutoff_s = time.time() - older_than
        for found in listing:
            if found.key in claimed or not found.key.startswith(store.artifacts_root):
                continue
            if under(found.key, keep) or found.modified > cutoff_s:
                continue
            orphan_kind.objects.append(found)
    return Plan(runs, logged_models, experiments, orphan_kind, kept)


def live_prefixes(database: Database, store: ObjectStore, has_logged_models: bool) -> set[str]:
    """Folders that rows point into (runs, logged models, model versions, traces), any state."""
    uris = [uri for (uri,) in rows(database, "SELECT artifact_uri FROM runs")]
    if has_logged_models:
        uris += [uri for (uri,) in rows(database, "SELECT artifact_location FROM logged_models")]
    uris += [uri for (uri,) in rows(database, "SELECT storage_location FROM model_versions")]
    if table_exists(database, "trace_tags"):
        uris += [
            uri
            for (uri,) in rows(
                database,
                f"SELECT value FROM trace_tags WHERE key = {quote_literal(TRACE_LOCATION_TAG)}",
            )
        ]
    prefixes = {store_prefix(uri, store) for uri in uris}
    return {p for p in prefixes if p is not None}


# =============================================================================================
# Doing it
# =============================================================================================


def delete_rows(database: Database, plan: Plan) -> None:
    """All row deletions in one transaction: children (by the catalog's foreign keys) first."""
    statements: list[str] = []
    if plan.logged_models.items:
        ids = in_list(plan.logged_models.items)
        for child, column, rule in referencing(database, "logged_models"):
            if rule in ("a", "r"):
                statements.append(f"DELETE FROM {child} WHERE {column} IN {ids}")
        statements.append(f"DELETE FROM logged_models WHERE model_id IN {ids}")
    if plan.runs.items:
        ids = in_list(plan.runs.items)
        for child, column, rule in referencing(database, "runs"):
            if rule in ("a", "r"):
                statements.append(f"DELETE FROM {child} WHERE {column} IN {ids}")
        statements.append(f"DELETE FROM runs WHERE run_uuid IN {ids}")
    if plan.experiments.items:
        ids = in_list(plan.experiments.items)
        statements.append(f"DELETE FROM experiment_tags WHERE experiment_id IN {ids}")
        statements.append(f"DELETE FROM experiments WHERE experiment_id IN {ids}")
    if statements:
        database.query("BEGIN; " + "; ".join(statements) + "; COMMIT;")


def collect_garbage(
    target: Target, older_than: float, orphans: bool, dry_run: bool, say: Say
) -> Plan:
    say(
        f"gc: {target.description}: looking for what was deleted more than {older_than:g} s ago"
        + (" and for orphan objects" if orphans else "")
    )
    plan = plan_gc(target, older_than, orphans)
    for reason in plan.kept:
        say(f"gc: kept {reason}")
    verb = "would delete" if dry_run else "deleting"
    for kind in plan.kinds:
        if kind.name != "orphans" or orphans:
            say(f"gc: {verb} {kind.line()}")
    keys = plan.keys()
    total = sum(kind.bytes for kind in plan.kinds)
    if dry_run:
        say(f"gc: dry run: nothing deleted ({len(keys)} objects, {total} bytes would go)")
        return plan
    target.objects.delete(keys)
    delete_rows(target.database, plan)
    say(
        f"gc: done: {len(plan.runs.items)} runs, {len(plan.logged_models.items)} logged models, "
        f"{len(plan.experiments.items)} experiments, {len(keys)} objects ({total} bytes) deleted"
    )
    return plan


# =============================================================================================
# Command line
# =============================================================================================


def register(subparsers: Any) -> None:
    gc = subparsers.add_parser(
        "gc",
        help="permanently delete deleted runs, logged models and experiments (and orphan objects)",
        description="Permanently delete runs, logged models and experiments deleted more than "
        "--older-than ago, with their artifacts; --orphans also removes objects no row refers "
        "to. Registered model versions and what they use are never touched.",
    )
    gc.add_argument(
        "--older-than",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="only what was deleted (orphans: last written) longer ago than this: 30d, 12h, "
        "1d12h, 0s (default 0s: everything deleted)",
    )
    gc.add_argument(
        "--orphans",
        action="store_true",
        help="also delete objects under MLflow's artifacts root that no run, logged model, "
        "model version or trace refers to",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would go (counts, bytes); delete nothing"
    )
    add_target_options(gc)
    gc.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    return reporting_errors(
        "mlstack gc",
        lambda: collect_garbage(target_of(args), args.older_than, args.orphans, args.dry_run, say),
    )
