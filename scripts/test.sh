#!/usr/bin/env bash
# The project's test command (docs/testing.md and CI): bootstrap the venv, then run each tier in turn.
# A tier that runs no test (pytest exit 5) or skips a test FAILS: a silently skipped tier is a bug.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/test.sh [-h] [TIER ...]

Tiers (default: unit integration reliability docker browser k8s):
  unit         fast tests, no services (~1 min); installs promtool (scripts/install-promtool.sh)
  integration  the local platform: real PostgreSQL, S3 (SeaweedFS), MLflow server, serving (~13 min)
  reliability  fault injection, backup/restore, gc, import, upgrade on dedicated local platforms (~21 min)
  docker       the real docker-compose.yml with `docker compose` (~28 min); provides a Docker engine
               and Compose v2 when none answers, and builds offline stand-ins when no registry answers
  browser      the MLflow UI in headless Chromium on the local platform and on the compose stack
               (docs/browser-tests.md); installs Debian's chromium + chromium-driver, and needs
               the Docker engine like the docker tier
  k8s          the Helm chart (docs/kubernetes.md): helm lint, helm template over a values matrix,
               strict schemas, posture assertions; then a simulation running the rendered
               manifests on the Docker engine; installs helm/kubectl/kubernetes-validate
               (scripts/install-k8s-tools.sh) and needs the engine like the docker tier
Extra pytest arguments: PYTEST_ARGS="-x -k name" scripts/test.sh unit
USAGE
}
tiers=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    unit|integration|reliability|docker|browser|k8s) tiers+=("$arg") ;;
    *) echo "test.sh: unknown tier '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#tiers[@]} -gt 0 ] || tiers=(unit integration reliability docker browser k8s)

cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export MLSTACK_FORBID_SKIPS=1  # tests/conftest.py fails the session on any skipped test

run_tier() {
  local tier=$1 rc=0
  echo "=== tier: $tier"
  # shellcheck disable=SC2086
  python -m pytest -m "$tier" ${PYTEST_ARGS:-} || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "test.sh: tier '$tier' ran no tests: that is a failure, not a pass" >&2
    return 1
  fi
  return "$rc"
}

for tier in "${tiers[@]}"; do
  if [ "$tier" = unit ]; then
    scripts/install-promtool.sh  # the monitoring rules' tests (tests/unit/test_monitoring_files.py)
  fi
  if [ "$tier" = browser ]; then
    scripts/install-browser.sh
  fi
  if [ "$tier" = k8s ]; then
    scripts/install-k8s-tools.sh
  fi
  if [ "$tier" = docker ] || [ "$tier" = browser ] || [ "$tier" = k8s ]; then
    tests/e2e/docker-engine.sh install
    engine_was_up=false
    if timeout 10 docker info >/dev/null 2>&1; then engine_was_up=true; fi
    tests/e2e/docker-engine.sh start
    # Stop the engine only if this run started it, whatever happens: an engine that was already
    # up is someone else's (another run, a developer), even if docker-engine.sh started it.
    if [ "$engine_was_up" = false ]; then
      trap 'tests/e2e/docker-engine.sh stop || true' EXIT
    fi
  fi
  run_tier "$tier"
done
echo "test.sh: all tiers passed: ${tiers[*]}"
