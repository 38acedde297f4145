#!/usr/bin/env bash
# One line per service of the Docker platform; exit 1 unless every one is as it should be:
# long-running services running and healthy, the one-shots (config-check, create-bucket) exited 0.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/health-check.sh [-h]

Prints SERVICE, STATE, HEALTH and a verdict for every service `docker compose up` starts.
Exit 0 when all are OK, 1 when any is not (or the stack is not running), 2 on misuse.
Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
# One-shot services: done when they exited 0.
one_shot=" config-check create-bucket "
# '|'-separated: HEALTH is empty for services without a healthcheck, and `read` would merge blanks.
status=$(docker compose ps --all --format '{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}')
failed=0
printf '%-16s %-10s %-10s %s\n' SERVICE STATE HEALTH VERDICT
for service in $(docker compose config --services); do
  IFS='|' read -r _ state health code <<<"$(grep "^$service|" <<<"$status" || echo "$service|missing||")"
  health=${health:--}
  if [[ $one_shot == *" $service "* ]]; then
    [ "$state" = exited ] && [ "$code" = 0 ] && verdict=ok || verdict=FAILED
  else
    [ "$state" = running ] && [ "$health" = healthy ] && verdict=ok || verdict=FAILED
  fi
  [ "$verdict" = ok ] || failed=1
  printf '%-16s %-10s %-10s %s\n' "$service" "$state" "$health" "$verdict"
done
exit "$failed"
