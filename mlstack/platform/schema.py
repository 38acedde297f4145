"""Indexes this project adds to MLflow's tracking schema: run after `mlflow db upgrade` at every
start of the tracking server (native: mlstack/local/tracking.py; Compose and the Helm chart's
migration job: docker/mlflow-server.sh), so they are there on a new database and back after an
upgrade that rebuilt a table.

    python -m mlstack.platform.schema postgresql://USER@HOST:PORT/DB   (password: PGPASSWORD)

Each is `CREATE INDEX CONCURRENTLY IF NOT EXISTS` (writers are not blocked while it builds on a
large database); an index a failed concurrent build left INVALID is dropped and built again.
Nothing here changes MLflow's tables or alembic revision: dropping the indexes gives back the
stock schema.

Why (bench/tracking_bench.py, bench/README.md): the UI's runs table asks, per experiment, for the
first 100 runs by start time with `SELECT DISTINCT runs.* ... WHERE experiment_id = ? ORDER BY
CASE WHEN start_time IS NULL THEN 1 ELSE 0 END, start_time DESC, run_uuid LIMIT 101`. MLflow's
schema has no index on runs.experiment_id, so PostgreSQL reads every run and sorts them all (on
disk beyond a few thousand runs); with the index below it reads about 100 index entries in order
(EXPLAIN at 10^5 runs: 1,195 ms -> 0.4 ms). Our own runs/search route (mlstack/runs_search.py)
writes the same ORDER BY, so it uses the index too.

A page ordered by a metric: MLflow's SQL sorts every run of the experiment (a LEFT JOIN of
latest_metrics, ordered by a CASE over it) before its LIMIT, which no index can feed. Our route
reads the runs that have the metric as a number first, in the order of `latest_metrics (key,
is_nan, value)` below, and stops after a page (EXPLAIN at 10^5 runs: 6 ms, against MLflow's 450 ms
sort).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ExtraIndex:
    name: str
    table: str
    definition: str  # what follows `ON table`

    def create_sql(self) -> str:
        return (
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {self.name} ON {self.table} {self.definition}"
        )


# The runs table's ORDER BY, expression for expression as MLflow 3.17 writes it (psycopg2 sends
# the CASE's 1 and 0 as literals, so the planner matches the expression).
EXTRA_INDEXES = (
    ExtraIndex(
        "mlstack_runs_experiment_start_time",
        "runs",
        "(experiment_id, (CASE WHEN start_time IS NULL THEN 1 ELSE 0 END), start_time DESC, run_uuid)",
    ),
    # A metric's runs in value order (NaNs apart), for runs/search ordered by a metric.
    ExtraIndex("mlstack_latest_metrics_key_value", "latest_metrics", "(key, is_nan, value)"),
)
INDEX_NAMES = tuple(index.name for index in EXTRA_INDEXES)


def psycopg2_uri(uri: str) -> str:
    """A libpq URI from a SQLAlchemy one (`postgresql+psycopg2://` -> `postgresql://`)."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def ensure_indexes(uri: str) -> list[str]:
    """Create every missing (or invalid) extra index; the names it built."""
    import psycopg2

    built = []
    conn = psycopg2.connect(psycopg2_uri(uri), connect_timeout=10)
    conn.autocommit = True  # CONCURRENTLY cannot run inside a transaction
    try:
        with conn.cursor() as cursor:
            for index in EXTRA_INDEXES:
                cursor.execute(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE c.relname = %s",
                    (index.name,),
                )
                row = cursor.fetchone()
                if row is not None and row[0]:
                    continue
                if row is not None:  # left INVALID by an interrupted concurrent build
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}")
                cursor.execute(index.create_sql())
                built.append(index.name)
    finally:
        conn.close()
    return built


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlstack.platform.schema DATABASE_URI", file=sys.stderr)
        return 2
    began = time.monotonic()
    try:
        built = ensure_indexes(args[0])
    except Exception as error:  # psycopg2.Error and connection failures alike: say it, exit 1
        print(f"mlstack schema: could not ensure the extra indexes: {error}", file=sys.stderr)
        return 1
    what = f"built {', '.join(built)}" if built else "all present"
    print(f"mlstack schema: extra indexes {what} ({time.monotonic() - began:.1f} s)",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
