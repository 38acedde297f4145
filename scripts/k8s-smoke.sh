#!/usr/bin/env bash
# Smoke test of charts/mlstack on a REAL Kubernetes cluster (kind, k3d, or any kubeconfig): install
# the chart, wait for tracking, run a trainer Job from its CronJob, wait for serving, and call
# /invocations through a port-forward. CI cannot run this: no cluster can run on its machines (no
# reachable registry ships kube-apiserver, kubelet, k3s or a kind node image); the k8s test tier
# simulates the release on Docker instead (docs/kubernetes.md, "Tests").
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/k8s-smoke.sh [-h] [--namespace NS] [--release NAME] [--keep] [HELM ARGS...]

Installs charts/mlstack into the current kubectl context (default: namespace mlstack-smoke,
release mlstack, values charts/mlstack/examples/trial.yaml: bundled PostgreSQL and S3), waits
for the tracking rollout, runs the linear_model trainer once (kubectl create job --from=cronjob/...),
waits for serving to load the champion, and POSTs a row to /invocations through
`kubectl port-forward`. Exit 0 only if the prediction comes back. Then uninstalls the release and
deletes the namespace, unless --keep.

The cluster must be able to pull the project's images (docs/kubernetes.md, "Images"): for kind,
  kind load docker-image mlstack-mlflow:0.1.0 mlstack-linear_model_trainer:0.1.0
Extra arguments go to `helm install` (e.g. --set image.repository=registry.example/mlstack-mlflow
or -f my-values.yaml; they replace the trial values when any -f is given).
Needs: kubectl, helm (scripts/install-k8s-tools.sh puts both in .venv/bin), curl.
USAGE
}

namespace=mlstack-smoke
release=mlstack
keep=false
helm_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --namespace) [ $# -ge 2 ] || { usage >&2; exit 2; }; namespace=$2; shift 2 ;;
    --release) [ $# -ge 2 ] || { usage >&2; exit 2; }; release=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    --set|--set-string|--set-json|-f|--values) [ $# -ge 2 ] || { usage >&2; exit 2; }; helm_args+=("$1" "$2"); shift 2 ;;
    *) echo "k8s-smoke: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PATH="$PWD/.venv/bin:$PATH"
for tool in kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "k8s-smoke: $tool not found (scripts/install-k8s-tools.sh)" >&2; exit 1; }
done
kubectl version >/dev/null || { echo "k8s-smoke: no cluster answers in the current kubectl context" >&2; exit 1; }

case "$release" in
  *mlstack*) fullname=$release ;;
  *) fullname=$release-mlstack ;;
esac
has_values=false
for arg in "${helm_args[@]+"${helm_args[@]}"}"; do
  case "$arg" in -f|--values) has_values=true ;; esac
done
$has_values || helm_args=(-f charts/mlstack/examples/trial.yaml "${helm_args[@]+"${helm_args[@]}"}")

log() { echo "k8s-smoke: $*" >&2; }
pf_pid=""
cleanup() {
  [ -z "$pf_pid" ] || kill "$pf_pid" 2>/dev/null || true
  if [ "$keep" = false ]; then
    log "uninstalling (--keep to leave it running)"
    helm uninstall "$release" --namespace "$namespace" >/dev/null 2>&1 || true
    kubectl delete namespace "$namespace" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
on_failure() {
  log "FAILED; state of namespace $namespace:"
  kubectl -n "$namespace" get pods,jobs,svc -o wide >&2 || true
  kubectl -n "$namespace" get events --sort-by=.lastTimestamp 2>/dev/null | tail -20 >&2 || true
}
trap on_failure ERR

# Hooks run inside `helm install`: Secrets, bundled stores, the migration Job, the bucket Job.
log "helm install $release (namespace $namespace): hooks first, then the rollout"
helm install "$release" charts/mlstack --namespace "$namespace" --create-namespace \
  --timeout 15m "${helm_args[@]}"
kubectl -n "$namespace" rollout status "deployment/$fullname-tracking" --timeout=10m

job="smoke-train-$(date +%s)"
log "training: kubectl create job --from=cronjob/$fullname-linear-model-trainer $job"
kubectl -n "$namespace" create job "--from=cronjob/$fullname-linear-model-trainer" "$job"
kubectl -n "$namespace" wait --for=condition=complete "job/$job" --timeout=20m
kubectl -n "$namespace" logs "job/$job" | sed -n '/=== training summary ===/,$p'

# Serving turns Ready once it has loaded models:/linear_model@champion.
kubectl -n "$namespace" rollout status "deployment/$fullname-serving" --timeout=10m
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kubectl -n "$namespace" port-forward "svc/$fullname-serving" "$port:5001" >/dev/null 2>&1 &
pf_pid=$!
for _ in $(seq 30); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 1
done
answer=$(curl -fsS -X POST "http://127.0.0.1:$port/invocations" -H 'Content-Type: application/json' \
  -d '{"dataframe_split": {"columns": ["age","sex","bmi","bp","s1","s2","s3","s4","s5","s6"],
       "data": [[0.038,0.051,0.062,0.022,-0.044,-0.035,-0.043,-0.003,0.020,-0.018]]}}')
echo "$answer"
case "$answer" in
  *'"predictions"'*) log "PASSED: serving answered through svc/$fullname-serving" ;;
  *) log "serving answered without predictions"; exit 1 ;;
esac
