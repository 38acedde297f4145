#!/usr/bin/env bash
# Build the images and start the Docker platform; returns once every service is healthy.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/start.sh [-h]

Runs `docker compose up -d --build --wait` from the repository root, then prints the URLs.
Safe to run again: running services are kept, changed ones are recreated.
Environment: COMPOSE_FILE (e.g. docker-compose.yml:tests/e2e/compose.offline.yml for the offline
stand-ins), COMPOSE_PROJECT_NAME, WAIT_TIMEOUT (seconds, default 600), and every variable listed
at the top of docker-compose.yml. GIT_COMMIT defaults to the checkout's commit (tagged on runs).
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
GIT_COMMIT="${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}"
export GIT_COMMIT
if ! docker compose up -d --build --wait --wait-timeout "${WAIT_TIMEOUT:-600}"; then
  # A docker.env the stores would refuse stops `up` at the config-check service, whose reasons
  # are only in its log: repeat them here, where the user is looking.
  if [ "$(docker compose ps --all --format '{{.State}} {{.ExitCode}}' config-check 2>/dev/null)" = "exited 2" ]; then
    docker compose logs --no-color --no-log-prefix config-check >&2 || true
  fi
  exit 1
fi
docker compose ps
# The tracking server's start-up check, repeated here so it is not lost in the logs: a WARNING
# when a CHANGEME credential of docker.env is in use and a port is published beyond loopback, or
# MLflow is published beyond loopback without auth (docs/reliability-security.md).
docker compose exec -T mlflow mlflow-server --check-defaults || true
echo
echo "MLflow UI:  http://localhost:$(docker compose port mlflow 5000 | cut -d: -f2)"
echo "Serving:    http://localhost:$(docker compose port serving 5001 | cut -d: -f2)/invocations"
echo "Train:      scripts/train.sh   (or: docker compose run --rm linear_model_trainer)"
