#!/usr/bin/env bash
# Reclaim storage: permanently delete runs, logged models and experiments that were deleted (and,
# with --orphans, objects nothing refers to): `mlstack gc` on the Compose stack or the native platform.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/gc.sh [-h] [--compose | --native [--state-dir DIR]] [--older-than DURATION]
                     [--orphans] [--dry-run]

  --compose              the Docker Compose stack (SQL and the bucket's listing run inside it)
  --native               the `mlstack local` platform; --state-dir DIR (default .mlstack)
  --older-than DURATION  only what was deleted longer ago: 30d, 12h, 1d12h, 0s (default 0s)
  --orphans              also delete objects under MLflow's artifacts root that no run, logged
                         model, model version or trace refers to
  --dry-run              print what would go (counts and bytes per kind); delete nothing
Default target: compose when `docker compose ps` shows the stack running, else native.
Registered model versions, their runs and their files are never deleted. Safe to run twice.
Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME (compose), PYTHON and VENV (default .venv).
USAGE
}

# shellcheck source=scripts/lib/backup-common.sh
. "$(dirname "$0")/lib/backup-common.sh"

target=""
state_dir=""
options=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --compose|--native) [ -z "$target" ] || { usage >&2; exit 2; }; target=${1#--}; shift ;;
    --state-dir) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; state_dir=$2; shift 2 ;;
    --older-than) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; options+=(--older-than "$2"); shift 2 ;;
    --orphans|--dry-run) options+=("$1"); shift ;;
    *) echo "gc.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -z "$state_dir" ] || [ "$target" != compose ] || { usage >&2; exit 2; }
state_dir=$(absolute "$state_dir")
cd "$(dirname "$0")/.."
target=$(choose_target)

where=(--compose)
if [ "$target" = native ]; then
  where=()
  [ -z "$state_dir" ] || where=(--state-dir "$state_dir")
fi
run_mlstack gc "${where[@]}" "${options[@]}"
