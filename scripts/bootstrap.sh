#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv with every dependency pinned by
# constraints.txt, the same lock file the images use. Idempotent: a second run only checks.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/bootstrap.sh [-h]

Creates .venv (Python 3.11+) and installs mlstack with its local-platform, serving, dev and k8s
extras, pinned by constraints.txt. On Debian/Ubuntu it installs python3-venv with apt when the
venv module is missing. Safe to run twice. Environment: PYTHON (default python3), VENV (default .venv).
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if ! command -v "$PYTHON" >/dev/null; then
  echo "bootstrap: $PYTHON not found; install Python 3.11+ first" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11+ needed, found $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
# Debian's python3 ships without venv/ensurepip until python3-venv is installed.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing python3-venv with apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  else
    echo "bootstrap: the Python venv module is missing (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.mlstack-installed"
want="$(cat constraints.txt pyproject.toml "$0" | sha256sum | cut -d' ' -f1)"  # this script: its extras list
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "bootstrap: $VENV is up to date"
  exit 0
fi
"$VENV/bin/python" -m pip install -qq --upgrade pip
"$VENV/bin/python" -m pip install -qq -c constraints.txt -e '.[local,serve,dev,k8s]'
echo "$want" > "$stamp"
echo "bootstrap: $VENV ready ($("$VENV/bin/python" --version); activate with: source $VENV/bin/activate)"
