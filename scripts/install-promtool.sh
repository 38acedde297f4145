#!/usr/bin/env bash
# promtool (Prometheus' config and rule checker, `promtool test rules`) for the unit tier's
# monitoring tests, from Debian's `prometheus` package. Only the one binary is taken out of the .deb
# (apt-get download + dpkg-deb -x) into the venv's bin folder: installing the package itself would
# start a Prometheus daemon listening on every interface. Idempotent.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/install-promtool.sh [-h]

Puts Debian's promtool (package `prometheus`, 2.42 on bookworm) at $VENV/bin/promtool (default
.venv/bin/promtool) unless one is there and runs. Needs apt-get (and root when apt has no package
lists yet). scripts/test.sh runs it before the unit tier. Safe to run twice.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
target="$VENV/bin/promtool"
log() { echo "install-promtool: $*" >&2; }

if [ -x "$target" ] && "$target" --version >/dev/null 2>&1; then
  log "$("$target" --version 2>&1 | head -1)"
  exit 0
fi
[ -d "$VENV/bin" ] || { log "no $VENV: run scripts/bootstrap.sh first"; exit 1; }
command -v apt-get >/dev/null || { log "needs apt-get (Debian/Ubuntu); put a promtool at $target yourself"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Other jobs on the same machine may hold the apt lock for a while: wait for it, don't fail.
apt_opts=(-o DPkg::Lock::Timeout=600)
if ! (cd "$work" && apt-get "${apt_opts[@]}" download prometheus >/dev/null 2>&1); then
  if [ "$(id -u)" != 0 ]; then
    log "apt-get download prometheus failed and only root can run apt-get update"
    exit 1
  fi
  apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && apt-get "${apt_opts[@]}" download prometheus)
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
install -m 755 "$work/root/usr/bin/promtool" "$target"
log "installed $("$target" --version 2>&1 | head -1) at $target"
