# shellcheck shell=bash
# Sourced by scripts/backup.sh and scripts/restore.sh (not a command of its own): how both pick
# the platform and run mlstack. Callers set $target and $state_dir first.

# The target: the one asked for; else compose when its mlflow service runs; else native.
choose_target() {
  if [ -n "$target" ]; then
    echo "$target"
  elif [ -z "$state_dir" ] && command -v docker >/dev/null \
      && docker compose ps --status running --services 2>/dev/null | grep -qx mlflow; then
    echo compose
  else
    echo native
  fi
}
# mlstack from this checkout: $PYTHON, else the project's venv, else python3 on PATH.
run_mlstack() {
  local python=${PYTHON:-}
  if [ -z "$python" ]; then
    python="${VENV:-.venv}/bin/python"
    [ -x "$python" ] || python=python3
  fi
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    "$python" -m mlstack "$@"
}
# Paths the user typed are relative to where they stand, not to the repository root.
absolute() {
  case "$1" in /*|"") echo "$1" ;; *) echo "$PWD/$1" ;; esac
}
