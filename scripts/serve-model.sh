#!/usr/bin/env bash
# Switch what the serving service answers /invocations with, by recreating it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/serve-model.sh [-h] NAME [ALIAS|VERSION]

  NAME            registered model, e.g. logistic_model
  ALIAS           serve models:/NAME@ALIAS and follow the alias (default: champion)
  VERSION         a number: serve exactly models:/NAME/VERSION
Recreates only `serving` (SERVE_MODEL / SERVE_ALIAS / SERVE_MODEL_URI) and waits until healthy.
The choice lasts until the next `docker compose up` without these variables: put them in .env
to keep it. Other models holding the alias stay reachable at /models/<name>/invocations.
Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|-*) usage >&2; exit 2 ;;
esac
[ "$#" -le 2 ] || { usage >&2; exit 2; }

name=$1 target=${2:-champion}
if [[ $target =~ ^[0-9]+$ ]]; then
  export SERVE_MODEL="$name" SERVE_MODEL_URI="models:/$name/$target"
  keep="SERVE_MODEL=$name SERVE_MODEL_URI=$SERVE_MODEL_URI"
else
  export SERVE_MODEL="$name" SERVE_ALIAS="$target" SERVE_MODEL_URI=""
  keep="SERVE_MODEL=$name SERVE_ALIAS=$target"
fi

cd "$(dirname "$0")/.."
docker compose up -d --no-deps --wait serving
echo "serving now follows ${SERVE_MODEL_URI:-models:/$name@$target}"
echo "to keep it across \`docker compose up\`, put in .env: $keep"
