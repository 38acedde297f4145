#!/usr/bin/env bash
# Upgrade the platform's database to the MLflow this checkout pins, rehearsed on a copy first:
# back up, restore into a scratch platform (native: a temporary `mlstack local`; Compose: a scratch
# compose project), migrate and check it there, and only then migrate the real platform
# (`mlstack upgrade`). A failed rehearsal changes nothing.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/upgrade.sh [-h] [--compose | --native [--state-dir DIR]] [--backups DIR]
                          [--keep-scratch]

  --compose         the Docker Compose stack: the running containers are the old version, this
                    checkout's compose files and Dockerfiles the new one
  --native          the `mlstack local` platform (--state-dir, default .mlstack)
  --backups DIR     where the pre-upgrade backup goes (default backups/)
  --keep-scratch    keep the rehearsal's scratch platform to look into
Default target: compose when `docker compose ps` shows the stack running, else native.
Run it after updating the checkout (git pull; native: scripts/bootstrap.sh too). Steps:
1 backup, 2 restore into a scratch platform, 3 migrate it (mlflow db upgrade) and check that
every run, version and alias is there, 4 only then migrate the real platform and check it.
Roll back: restore the backup into a platform of the old version (docs/upgrades.md).
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
    --state-dir) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; state_dir=$(absolute "$2"); shift 2 ;;
    --backups)
      [ "$#" -ge 2 ] || { usage >&2; exit 2; }; options+=("$1" "$(absolute "$2")"); shift 2 ;;
    --keep-scratch) options+=("$1"); shift ;;
    *) echo "upgrade.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -z "$state_dir" ] || [ "$target" != compose ] || { usage >&2; exit 2; }
cd "$(dirname "$0")/.."
target=$(choose_target)

where=(--compose)
if [ "$target" = native ]; then
  where=()
  [ -z "$state_dir" ] || where=(--state-dir "$state_dir")
fi
run_mlstack upgrade "${where[@]}" "${options[@]}"
