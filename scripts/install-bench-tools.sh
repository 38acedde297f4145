#!/usr/bin/env bash
# wrk, the HTTP load generator of bench/serving_bench.py, from Debian's `wrk` package (C, epoll,
# LuaJIT for the request script). The Python load generator of the benchmark spends about as much
# CPU per request as the server it measures; on a 2-core machine that hides the second serving
# worker. wrk drives the same load with a few percent of one core. Idempotent.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/install-bench-tools.sh [-h]

Installs Debian's wrk (4.1 on bookworm) with apt-get unless `wrk` is on PATH already.
Needs apt-get and root. bench/serving_bench.py uses wrk when it finds it (`--client auto`), its
own Python load generator otherwise. Safe to run twice.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

log() { echo "install-bench-tools: $*" >&2; }

if command -v wrk >/dev/null; then
  log "$(wrk --version 2>&1 | head -1 | cut -c1-60)"
  exit 0
fi
command -v apt-get >/dev/null || { log "needs apt-get (Debian/Ubuntu); install wrk yourself"; exit 1; }
[ "$(id -u)" = 0 ] || { log "apt-get install needs root: sudo $0"; exit 1; }
# Other jobs on the same machine may hold the apt lock for a while: wait for it, don't fail.
apt_opts=(-o DPkg::Lock::Timeout=600)
if ! DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq wrk >/dev/null; then
  apt-get "${apt_opts[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq wrk >/dev/null
fi
log "installed $(wrk --version 2>&1 | head -1 | cut -c1-60)"
