#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser test tier, from Debian's own packages
# (no browser download at run time: only the package registries are reachable). Idempotent.
set -euo pipefail

PACKAGES=(chromium chromium-driver)

usage() {
  cat <<'USAGE'
Usage: scripts/install-browser.sh [-h]

Installs Debian's `chromium` and `chromium-driver` with apt (as root) unless the browser
(/usr/lib/chromium/chromium) and /usr/bin/chromedriver are already there, then prints their
versions.
The browser tier (scripts/test.sh browser) runs it first. Safe to run twice.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

log() { echo "install-browser: $*" >&2; }

if [ -x /usr/lib/chromium/chromium ] && [ -x /usr/bin/chromedriver ]; then
  log "chromium and chromedriver present"
else
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "need root and apt-get to install ${PACKAGES[*]} (Debian/Ubuntu); install them yourself"
    exit 1
  fi
  # Other jobs on the same machine may hold the dpkg lock for a while: wait for it, don't fail.
  apt_opts=(-o DPkg::Lock::Timeout=600)
  apt-get "${apt_opts[@]}" update
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends \
    "${PACKAGES[@]}"
fi
# The binary, not Debian's /usr/bin/chromium wrapper (the tests start the binary: browser_helpers.py).
/usr/lib/chromium/chromium --version
/usr/bin/chromedriver --version
