#!/usr/bin/env bash
# Train models on the Docker platform: `docker compose run --rm <model>_trainer` for each.
set -euo pipefail

MODELS=(linear_model logistic_model random_forest_model)

usage() {
  cat <<'USAGE'
Usage: scripts/train.sh [-h] [MODEL...] [-- TRAIN_ARGS...]

MODEL: linear_model, logistic_model, random_forest_model (default: all three, in that order).
TRAIN_ARGS go to every <model>/train.py, e.g. -- --set data.test_size=0.3 --experiment tryout
Starts the platform first if it is not running (the trainers depend on a healthy mlflow).
Each run registers a new version; it becomes @champion only when it beats the current one.
Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME.
USAGE
}
models=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    linear_model|logistic_model|random_forest_model) models+=("$1"); shift ;;
    *) echo "train.sh: unknown model '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ "${#models[@]}" -gt 0 ] || models=("${MODELS[@]}")

cd "$(dirname "$0")/.."
GIT_COMMIT="${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}"
export GIT_COMMIT
for model in "${models[@]}"; do
  echo "=== training $model"
  docker compose run --rm --build "${model}_trainer" "$@"
done
