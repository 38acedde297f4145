#!/usr/bin/env bash
# Upgrade the native platform's database to the MLflow this checkout pins, rehearsed on a copy
# first: back up, restore into a scratch platform, migrate and check it there, and only then
# migrate the real platform (`mlstack upgrade`). A failed rehearsal changes nothing.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/upgrade.sh [-h] [--state-dir DIR] [--backups DIR] [--keep-scratch]

  --state-dir DIR   the `mlstack local` platform (default .mlstack)
  --backups DIR     where the pre-upgrade backup goes (default backups/)
  --keep-scratch    keep the rehearsal's scratch platform to look into
Run it after updating the checkout and its venv (git pull; scripts/bootstrap.sh). Steps:
1 backup, 2 restore into a scratch platform, 3 migrate it (mlflow db upgrade) and check that
every run, version and alias is there, 4 only then migrate the real platform and check it.
Roll back: restore the backup into a platform of the old version (docs/upgrades.md).
The Compose stack: docs/upgrades.md. Honours PYTHON and VENV (default .venv).
USAGE
}

# shellcheck source=scripts/lib/backup-common.sh
. "$(dirname "$0")/lib/backup-common.sh"

options=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --state-dir|--backups)
      [ "$#" -ge 2 ] || { usage >&2; exit 2; }; options+=("$1" "$(absolute "$2")"); shift 2 ;;
    --keep-scratch) options+=("$1"); shift ;;
    *) echo "upgrade.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
run_mlstack upgrade "${options[@]}"
