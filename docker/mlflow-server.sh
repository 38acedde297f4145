#!/bin/sh
# The `mlflow` service: bring the database schema up to date, then `exec mlflow server` with the
# arguments compose gives (workers, artifacts, allowed hosts).
#   POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB   the same docker.env lines the postgres service uses
#   POSTGRES_HOST (default postgres), POSTGRES_PORT (default 5432)
# The password reaches libpq as PGPASSWORD, never inside the URI: no URL-encoding trouble with
# special characters, and it never shows on a command line (`ps`, `docker top`, logs).
set -eu
: "${POSTGRES_USER:?set it in docker.env}" "${POSTGRES_PASSWORD:?set it in docker.env}" "${POSTGRES_DB:?set it in docker.env}"
export PGPASSWORD="$POSTGRES_PASSWORD"
backend="postgresql+psycopg2://${POSTGRES_USER}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/${POSTGRES_DB}"

# Creates the tables on the first start, migrates after an MLflow upgrade, else a no-op. The server
# itself refuses to start on an out-of-date schema.
mlflow db upgrade "$backend"
exec mlflow server --backend-store-uri "$backend" "$@"
