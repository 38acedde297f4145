#!/usr/bin/env bash
# Stop the Docker platform. Data (runs, registry, artifacts) stay in their volumes unless --volumes.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/stop.sh [-h] [--volumes]

  (no flag)   docker compose down: containers and network go, the volumes stay
  --volumes   also delete the volumes: every run, model and artifact, for good
Safe to run again (nothing to stop is fine). Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME.
USAGE
}
args=(--remove-orphans)
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --volumes|-v) args+=(--volumes) ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac
[ "$#" -le 1 ] || { usage >&2; exit 2; }

cd "$(dirname "$0")/.."
# The train profile too, so a trainer container left by `run` without --rm goes as well.
docker compose --profile train down "${args[@]}"
