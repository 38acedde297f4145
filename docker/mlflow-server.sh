#!/bin/sh
# The `mlflow` service: warn about default credentials on a published stack, bring the database
# schema up to date, then `exec mlflow server` with the arguments compose gives (workers,
# artifacts, allowed hosts); with MLSTACK_AUTH=basic (docker-compose.auth.yml), as MLflow's
# basic-auth app.
#   mlflow-server [MLFLOW SERVER OPTIONS...]
#   mlflow-server --check-defaults     only the default-credential check, then exit 0
#   mlflow-server --upgrade-only       wait for PostgreSQL, `mlflow db upgrade`, exit (the Helm
#                                      chart's migration hook Job)
# Environment:
#   POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB   the same docker.env lines the postgres service uses
#   POSTGRES_HOST (default postgres), POSTGRES_PORT (default 5432)
#   MLSTACK_DB_WAIT_SECONDS (default 120)   how long to wait for PostgreSQL to accept a login
#                                    before giving up (exit 1, naming host and port); 0: try once
#   MLSTACK_MLFLOW_BIND, MLSTACK_SERVING_BIND, MLSTACK_MINIO_CONSOLE_BIND (and, with the
#   monitoring overlay, MLSTACK_GRAFANA_BIND, MLSTACK_PROMETHEUS_BIND)
#                                    the host addresses compose publishes (for the warning only)
#   MLSTACK_DB_UPGRADE (default true)   false: start without `mlflow db upgrade` (Kubernetes
#                                    replicas: the chart's hook Job migrates once, before them;
#                                    Compose keeps the default)
#   MLSTACK_AUTH                     none (default) or basic
#   MLSTACK_RUNS_SEARCH              sql (default: runs/search from SQL, mlstack/runs_search.py)
#                                    or mlflow (MLflow's handler for every request)
#   MLSTACK_RUN_WRITES               sql (default: runs created, logged and updated in one
#                                    transaction each, mlstack/run_writes.py) or mlflow (MLflow's
#                                    store for every write)
#   MLSTACK_MONITORING_TOKEN_FILE    (monitoring overlay) the scrape token: with basic auth, the
#                                    password of the non-admin user `mlstack-monitoring` Prometheus
#                                    logs in as (created or updated here, before the workers)
#   MLFLOW_AUTH_ADMIN_USERNAME (default admin), MLFLOW_AUTH_ADMIN_PASSWORD,
#   MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_DEFAULT_PERMISSION (default READ)   basic auth
# The password reaches libpq as PGPASSWORD, never inside a URI: no URL-encoding trouble with
# special characters, and it never shows on a command line (`ps`, `docker top`, logs) or in a file.
set -eu

# Credentials whose docker.env defaults carry the word CHANGEME; the auth ones count only when
# auth is on.
DEFAULT_CREDENTIALS="POSTGRES_PASSWORD MINIO_ROOT_PASSWORD AWS_SECRET_ACCESS_KEY"
AUTH_CREDENTIALS="MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY"
# Grafana's admin password counts only with the monitoring overlay (it sets MLSTACK_GRAFANA_BIND).
MONITORING_CREDENTIALS="GF_SECURITY_ADMIN_PASSWORD"

# A compose published address (`HOST:PORT`, `[V6]:PORT`, or a bare port) bound to loopback only?
is_loopback() {
  case "$1" in
    *:*) ;;
    *) return 1 ;;  # a bare port: Docker publishes it on every interface
  esac
  host=${1%:*}
  host=${host#\[}
  host=${host%\]}
  case "$host" in
    127.* | ::1) return 0 ;;
    *) return 1 ;;
  esac
}

auth_enabled() {
  [ "${MLSTACK_AUTH:-none}" = basic ]
}

# Print a WARNING (stderr, so `docker compose logs mlflow` shows it) when any published address is
# beyond loopback and a credential still holds its CHANGEME default, or MLflow has no login.
check_defaults() {
  exposed=""
  for bind in ${MLSTACK_MLFLOW_BIND:-} ${MLSTACK_SERVING_BIND:-} ${MLSTACK_MINIO_CONSOLE_BIND:-} \
    ${MLSTACK_GRAFANA_BIND:-} ${MLSTACK_PROMETHEUS_BIND:-}; do
    is_loopback "$bind" || exposed="${exposed:+$exposed, }$bind"
  done
  [ -n "$exposed" ] || return 0
  names=$DEFAULT_CREDENTIALS
  if auth_enabled; then
    names="$names $AUTH_CREDENTIALS"
  fi
  if [ -n "${MLSTACK_GRAFANA_BIND:-}" ]; then
    names="$names $MONITORING_CREDENTIALS"
  fi
  defaults=""
  for name in $names; do
    case "$(printenv "$name" || true)" in
      *[Cc][Hh][Aa][Nn][Gg][Ee][Mm][Ee]*) defaults="${defaults:+$defaults, }$name" ;;
    esac
  done
  if [ -n "$defaults" ]; then
    echo "WARNING: default credentials in use ($defaults still hold the CHANGEME values of" \
      "docker.env) while the stack is published beyond loopback ($exposed). Anyone who can" \
      "reach those addresses can log in: set new values in docker.env (docs/reliability-security.md)," \
      "or bind the *_BIND variables to 127.0.0.1." >&2
  fi
  if [ -n "${MLSTACK_MLFLOW_BIND:-}" ] && ! is_loopback "$MLSTACK_MLFLOW_BIND" && ! auth_enabled; then
    echo "WARNING: the MLflow UI/API is published on $MLSTACK_MLFLOW_BIND without" \
      "authentication: anyone who can reach it can read and change every run and model." \
      "Enable docker-compose.auth.yml (docs/reliability-security.md), or bind MLFLOW_BIND to 127.0.0.1." >&2
  fi
  return 0
}

if [ "${1:-}" = --check-defaults ]; then
  check_defaults
  exit 0
fi
upgrade_only=false
if [ "${1:-}" = --upgrade-only ]; then
  upgrade_only=true
  shift
fi
case "${MLSTACK_DB_UPGRADE:-true}" in
  true | false) ;;
  *)
    echo "mlflow-server: MLSTACK_DB_UPGRADE must be true or false, not '$MLSTACK_DB_UPGRADE'" >&2
    exit 2
    ;;
esac

: "${POSTGRES_USER:?set it in docker.env}" "${POSTGRES_PASSWORD:?set it in docker.env}" "${POSTGRES_DB:?set it in docker.env}"
check_defaults
export PGPASSWORD="$POSTGRES_PASSWORD"
db_host=${POSTGRES_HOST:-postgres}
db_port=${POSTGRES_PORT:-5432}
backend="postgresql+psycopg2://${POSTGRES_USER}@${db_host}:${db_port}/${POSTGRES_DB}"
db_wait=${MLSTACK_DB_WAIT_SECONDS:-120}
case "$db_wait" in
  "" | *[!0-9]*)
    echo "mlflow-server: MLSTACK_DB_WAIT_SECONDS must be a whole number of seconds, not '$db_wait'" >&2
    exit 2
    ;;
esac

# Block until PostgreSQL accepts a login over TCP, at most $db_wait seconds: `mlflow db upgrade`
# tries once and dies on "connection refused", and a database can be late for reasons compose's
# depends_on does not see (a restart of postgres alone, `docker compose run`, another
# orchestrator, the socket-only first initialisation of the official image). A refused password
# or a missing database will not heal by waiting: those end the wait at once.
wait_for_database() {
  python - "$db_host" "$db_port" "$db_wait" <<'PY'
import os
import sys
import time

import psycopg2

host, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + limit
waiting_said = False
while True:
    try:
        psycopg2.connect(
            host=host, port=port, user=os.environ["POSTGRES_USER"],
            dbname=os.environ["POSTGRES_DB"],
            connect_timeout=max(1, min(3, int(deadline - time.monotonic()))),
        ).close()
        sys.exit(0)
    except psycopg2.OperationalError as error:
        last = " ".join(str(error).split())
    if "password authentication failed" in last or "does not exist" in last:
        sys.exit(f"mlflow-server: PostgreSQL at {host}:{port} refused the login: {last} (the "
                 "volume keeps the POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB of its first start)")
    if time.monotonic() >= deadline:
        sys.exit(f"mlflow-server: PostgreSQL at {host}:{port} did not accept connections within "
                 f"{limit} s (MLSTACK_DB_WAIT_SECONDS); last error: {last}")
    if not waiting_said:
        print(f"mlflow-server: waiting up to {limit} s for PostgreSQL at {host}:{port} ({last})",
              file=sys.stderr, flush=True)
        waiting_said = True
    time.sleep(1)
PY
}

# The migration alone (the chart's hook Job): the tracking schema, and in auth mode the auth
# tables too, which the server would otherwise migrate at start, each replica racing the others.
if [ "$upgrade_only" = true ]; then
  wait_for_database
  echo "mlflow-server: upgrading the schema of ${db_host}:${db_port}/${POSTGRES_DB} (--upgrade-only)" >&2
  mlflow db upgrade "$backend"
  python -m mlstack.platform.schema "$backend"
  if [ "${MLSTACK_AUTH:-none}" = basic ]; then
    python -c 'import sys; from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore; SqlAlchemyStore().init_db(sys.argv[1])' "$backend"
  fi
  echo "mlflow-server: schema up to date" >&2
  exit 0
fi

case "${MLSTACK_AUTH:-none}" in
  none) ;;
  basic)
    : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set it in docker.env (auth mode)}"
    : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set it in docker.env (auth mode)}"
    # MLflow reads the auth store's URI from an ini file only. Written at every start to the
    # tmpfs (the root filesystem is read-only) and holding no secret: the admin password comes
    # from MLFLOW_AUTH_ADMIN_PASSWORD, the database password from PGPASSWORD. Users and
    # permissions live in the tracking database itself (their own tables and alembic version
    # table, supported since MLflow 3.6), so they are in every backup.
    auth_dir=$(mktemp -d "${TMPDIR:-/tmp}/mlflow-auth.XXXXXX")
    cat >"$auth_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $(printf '%s' "$backend" | sed 's/%/%%/g')
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"
    ;;
  *)
    echo "mlflow-server: MLSTACK_AUTH must be none or basic, not '$MLSTACK_AUTH'" >&2
    exit 2
    ;;
esac
case "${MLSTACK_RUNS_SEARCH:-sql}" in
  sql | mlflow) ;;
  *)
    echo "mlflow-server: MLSTACK_RUNS_SEARCH must be sql or mlflow, not '$MLSTACK_RUNS_SEARCH'" >&2
    exit 2
    ;;
esac
case "${MLSTACK_RUN_WRITES:-sql}" in
  sql | mlflow) ;;
  *)
    echo "mlflow-server: MLSTACK_RUN_WRITES must be sql or mlflow, not '$MLSTACK_RUN_WRITES'" >&2
    exit 2
    ;;
esac

wait_for_database
# Creates the tables on the first start, migrates after an MLflow upgrade, else a no-op. The server
# itself refuses to start on an out-of-date schema. (The auth tables migrate inside the server.)
if [ "${MLSTACK_DB_UPGRADE:-true}" = true ]; then
  mlflow db upgrade "$backend"
  # mlstack's extra indexes (mlstack/platform/schema.py): idempotent, re-applied after every upgrade.
  python -m mlstack.platform.schema "$backend"
else
  echo "mlflow-server: no schema upgrade at start (MLSTACK_DB_UPGRADE=false: a migration job owns it)" >&2
fi
# basic auth: what `mlflow server --app-name basic-auth` does before its workers start (auth tables,
# admin account), plus the monitoring login (mlstack/tracking_app.py). Once, here: not raced by
# every worker.
if auth_enabled; then
  python -m mlstack.tracking_app bootstrap-auth
fi
# `--app-name mlstack` (mlstack/tracking_app.py, an `mlflow.app` entry point like MLflow's own
# basic-auth): MLflow's app, or its basic-auth app with MLSTACK_AUTH=basic, plus per-endpoint
# request metrics when --expose-prometheus (MLFLOW_EXPOSE_PROMETHEUS) is on.
exec mlflow server --backend-store-uri "$backend" --app-name mlstack "$@"
