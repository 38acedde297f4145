#!/usr/bin/env bash
# Back up the whole platform (tracking database, every artifact object, a manifest with counts and
# checksums) into one archive: `mlstack backup create` on the Compose stack or the native platform.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/backup.sh [-h] [--compose | --native [--state-dir DIR]] [-o ARCHIVE]

  --compose        the Docker Compose stack (pg_dump and the bucket copy run inside it)
  --native         the `mlstack local` platform; --state-dir DIR (default .mlstack)
  -o ARCHIVE       where to write (default backups/mlstack-<UTC time>.tar.gz; .tar: no gzip)
Default target: compose when `docker compose ps` shows the stack running, else native.
Writes ARCHIVE only once complete. Check it with `mlstack backup verify ARCHIVE`; restore it
with scripts/restore.sh. Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME (compose), PYTHON and
VENV (default .venv) for the Python that runs mlstack.
USAGE
}

# shellcheck source=scripts/lib/backup-common.sh
. "$(dirname "$0")/lib/backup-common.sh"

target=""
state_dir=""
out=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --compose|--native) [ -z "$target" ] || { usage >&2; exit 2; }; target=${1#--}; shift ;;
    --state-dir) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; state_dir=$2; shift 2 ;;
    -o|--out) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; out=$2; shift 2 ;;
    *) echo "backup.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -z "$state_dir" ] || [ "$target" != compose ] || { usage >&2; exit 2; }
out=$(absolute "$out")
state_dir=$(absolute "$state_dir")
cd "$(dirname "$0")/.."
target=$(choose_target)
[ -n "$out" ] || out="backups/mlstack-$(date -u +%Y%m%dT%H%M%SZ).tar.gz"

where=(--compose)
if [ "$target" = native ]; then
  where=()
  [ -z "$state_dir" ] || where=(--state-dir "$state_dir")
fi
run_mlstack backup create "${where[@]}" --out "$out"
