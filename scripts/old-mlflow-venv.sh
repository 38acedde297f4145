#!/usr/bin/env bash
# A scratch venv with an OLDER MLflow from PyPI, for the upgrade test (tests/reliability/
# test_upgrade.py): it makes a database the way that release did, which the pinned MLflow must then
# migrate. Cached under $MLSTACK_CACHE_DIR (default ~/.cache/mlstack)/old-mlflow/<version>-py<X.Y>;
# a venv is reused only when its `.complete` marker exists (a failed install is rebuilt).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/old-mlflow-venv.sh [-h] VERSION

Creates (once) a venv with mlflow==VERSION, psycopg2-binary and this project's scikit-learn pin
(so that the pinned serving side can load the models it logs), and prints its python's path.
Environment: PYTHON (default python3), MLSTACK_CACHE_DIR (default ~/.cache/mlstack).
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac
version=$1
[[ "$version" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || {
  echo "old-mlflow-venv.sh: '$version' is not a version" >&2; usage >&2; exit 2; }

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
py=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv="${MLSTACK_CACHE_DIR:-$HOME/.cache/mlstack}/old-mlflow/$version-py$py"
# What goes in: that MLflow; psycopg2 for PostgreSQL; boto3 for its S3 artifact store; this
# project's scikit-learn pin (the pinned side loads the models it logs); SQLAlchemy < 2.1, which
# these older releases predate (2.1 removed a pool class they import). The marker holds this list:
# a changed list updates the venv.
recipe=("mlflow==$version" psycopg2-binary boto3 "sqlalchemy<2.1")
sklearn=$(grep -i '^scikit-learn==' constraints.txt || true)
[ -z "$sklearn" ] || recipe+=("$sklearn")
if [ "$(cat "$venv/.complete" 2>/dev/null)" != "${recipe[*]}" ]; then
  [ -x "$venv/bin/pip" ] || { rm -rf "$venv"; "$python" -m venv "$venv"; }
  rm -f "$venv/.complete"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${recipe[@]}" >&2
  echo "${recipe[*]}" > "$venv/.complete"
fi
echo "$venv/bin/python"
