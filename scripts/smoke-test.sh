#!/usr/bin/env bash
# End-to-end smoke test of a running Docker platform: train linear_model, then ask the serving
# API for two predictions and check the answer.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/smoke-test.sh [-h]

Needs the platform up (scripts/start.sh). Trains linear_model (a new version; it is served once it
is @champion), then POSTs two diabetes rows to serving's /invocations until it answers with two
predictions (up to 60 s: serving polls the registry). Exit 0 on success, 1 on failure.
Honours COMPOSE_FILE and COMPOSE_PROJECT_NAME. Needs curl.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
docker compose run --rm linear_model_trainer

url="http://$(docker compose port serving 5001)/invocations"
payload='{"dataframe_split": {"columns": ["age","sex","bmi","bp","s1","s2","s3","s4","s5","s6"], "data": [[0.0381,0.0507,0.0617,0.0219,-0.0442,-0.0348,-0.0434,-0.0026,0.0199,-0.0176], [-0.0019,-0.0446,-0.0515,-0.0263,-0.0084,-0.0192,0.0744,-0.0395,-0.0683,-0.0922]]}}'
number='-?[0-9][0-9.eE+-]*'
for _ in $(seq 1 30); do
  if answer=$(curl -sS --fail -D - -X POST "$url" -H 'Content-Type: application/json' -d "$payload" 2>/dev/null) \
      && grep -Eq "\"predictions\": ?\[$number, ?$number\]" <<<"$answer"; then
    grep -i '^x-model-' <<<"$answer" | tr -d '\r'
    tail -n 1 <<<"$answer"; echo
    echo "smoke test: OK ($url)"
    exit 0
  fi
  sleep 2
done
echo "smoke test: FAILED: no predictions from $url; last answer:" >&2
echo "${answer:-<none>}" >&2
exit 1
