#!/usr/bin/env bash
# Restore an archive of scripts/backup.sh into an EMPTY platform (Compose stack or native), then
# verify row counts and every object's sha256 against the archive's manifest.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/restore.sh [-h] [--compose | --native [--state-dir DIR]] [--force] ARCHIVE

  --compose        the Docker Compose stack (bring it up first: scripts/start.sh)
  --native         the `mlstack local` platform; --state-dir DIR (default .mlstack; `mlstack
                   local up` first)
  --force          restore into a platform that already holds runs or objects: its database and
                   bucket contents are REPLACED by the archive's
Default target: compose when `docker compose ps` shows the stack running, else native.
The archive is checked in full before anything is written; a damaged one changes nothing.
Exit 0 when the restored platform matches the manifest, 1 on any error or mismatch, 2 on misuse.
Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME (compose), PYTHON and VENV (default .venv).
USAGE
}

# shellcheck source=scripts/lib/backup-common.sh
. "$(dirname "$0")/lib/backup-common.sh"

target=""
state_dir=""
force=()
archive=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --compose|--native) [ -z "$target" ] || { usage >&2; exit 2; }; target=${1#--}; shift ;;
    --state-dir) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; state_dir=$2; shift 2 ;;
    --force) force=(--force); shift ;;
    -*) echo "restore.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) [ -z "$archive" ] || { usage >&2; exit 2; }; archive=$1; shift ;;
  esac
done
[ -n "$archive" ] || { echo "restore.sh: ARCHIVE is required" >&2; usage >&2; exit 2; }

[ -z "$state_dir" ] || [ "$target" != compose ] || { usage >&2; exit 2; }
archive=$(absolute "$archive")
state_dir=$(absolute "$state_dir")
cd "$(dirname "$0")/.."
target=$(choose_target)

where=(--compose)
if [ "$target" = native ]; then
  where=()
  [ -z "$state_dir" ] || where=(--state-dir "$state_dir")
fi
run_mlstack backup restore "${where[@]}" "${force[@]}" "$archive"
