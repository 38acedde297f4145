#!/usr/bin/env bash
# Docker engine + Compose v2 + buildx for the e2e tests, on Debian 12 (bookworm), as root.
#
#   install  Debian bookworm docker.io (engine 20.10) + debootstrap; Compose v2 (2.26) and
#            buildx (0.13) plugins from Debian trixie's .debs (unpacked, not installed).
#   start    start dockerd in the background unless an engine already answers.
#   stop     stop dockerd, only if `start` of this script started it.
#   status   say whether an engine answers and who started it.
#
# Timings here (2 cores): install ~15 s (apt: docker.io ~5 s, trixie index + 26 MB .debs ~8 s),
# start ~1-3 s, stop ~1 s with no containers running.
set -euo pipefail

STATE_DIR=/var/lib/mlstack-e2e          # private apt state for the trixie download
RUN_DIR=/run/mlstack-e2e                # marker: "this script started dockerd"
MARKER=$RUN_DIR/dockerd.started
PIDFILE=/var/run/mlstack-e2e-dockerd.pid
LOG=/var/log/mlstack-e2e-dockerd.log
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins   # searched by docker CLI 20.10 and 28.x
TRIXIE_PKGS=(docker-compose docker-buildx)

usage() {
  cat <<EOF
usage: $0 {install|start|stop|status|-h}
  install  apt-get install docker.io debootstrap (bookworm); put Compose v2 + buildx
           plugins from Debian trixie into $PLUGIN_DIR
  start    start dockerd (--iptables=false --ip-masq=false --ip-forward=false) unless
           'docker info' already answers; log: $LOG
  stop     stop dockerd if this script started it (marker $MARKER)
  status   report engine state
EOF
}

log() { echo "docker-engine: $*" >&2; }
engine_up() { timeout 10 docker info >/dev/null 2>&1; }

install_apt() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  # Trixie's signing keys (for the plugin download and the trixie debootstrap) came with a
  # bookworm point-release update of debian-archive-keyring.
  [ -e /usr/share/keyrings/debian-archive-trixie-stable.gpg ] || missing+=(debian-archive-keyring)
  if [ ${#missing[@]} -eq 0 ]; then log "docker.io and debootstrap present"; return; fi
  apt-get update
  # docker.io's postinst would start dockerd through /etc/init.d with default flags
  # (iptables on); a policy-rc.d that denies service starts prevents that.
  local policy=/usr/sbin/policy-rc.d backup=""
  if [ -e "$policy" ]; then backup=$(mktemp); cp -p "$policy" "$backup"; fi
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}" || rc=$?
  if [ -n "$backup" ]; then mv "$backup" "$policy"; else rm -f "$policy"; fi
  return $rc
}

install_plugins() {
  # Debian's build prints "Docker Compose version 2.26.1-4" (upstream: "... version v2.x").
  local v; v=$(docker compose version 2>/dev/null || true)
  if [[ $v =~ version\ v?2\. ]] && docker buildx version >/dev/null 2>&1; then
    log "compose v2 and buildx plugins present"; return
  fi
  # Bookworm only has Compose v1. Fetch trixie's packages with a PRIVATE apt source list,
  # lists dir and cache, so the host's apt never sees trixie; then just unpack them.
  local apt_dir=$STATE_DIR/apt-trixie
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$apt_dir/debs"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' \
    >"$apt_dir/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
              -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
              -o "Dir::State::Lists=$apt_dir/lists"
              -o "Dir::Cache=$apt_dir/cache"
              -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update
  rm -rf "$apt_dir/debs" "$apt_dir/x"; mkdir -p "$apt_dir/debs" "$apt_dir/x"
  (cd "$apt_dir/debs" && apt-get "${opts[@]}" download "${TRIXIE_PKGS[@]}")
  for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$apt_dir/x"; done
  install -d "$PLUGIN_DIR"
  install -m 755 "$apt_dir"/x/usr/libexec/docker/cli-plugins/docker-{compose,buildx} "$PLUGIN_DIR/"
  rm -rf "$apt_dir/x"
  docker compose version; docker buildx version
}

cmd_install() {
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
  install_apt
  install_plugins
}

cmd_start() {
  if engine_up; then log "engine already answers 'docker info'; not starting another"; return; fi
  command -v dockerd >/dev/null || { log "dockerd missing; run '$0 install' first"; exit 1; }
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    log "dockerd pid $(cat "$PIDFILE") exists but does not answer yet; waiting"
  else
    mkdir -p "$RUN_DIR"
    # No iptables/NAT/forwarding: containers on one bridge still reach each other and
    # published 127.0.0.1 ports work through docker-proxy; nothing reaches outside.
    # setsid + nohup: dockerd outlives this shell and the calling job's process group.
    setsid nohup dockerd --iptables=false --ip-masq=false --ip-forward=false \
      --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$MARKER"
    log "started dockerd pid $! (log $LOG)"
  fi
  for _ in $(seq 1 60); do
    if engine_up; then
      # Record dockerd's own pid (setsid may have forked) for `stop`.
      if [ -f "$MARKER" ] && [ -s "$PIDFILE" ]; then cp "$PIDFILE" "$MARKER"; fi
      log "engine up: $(docker version -f '{{.Server.Version}}')"; return
    fi
    sleep 1
  done
  log "dockerd did not answer within 60 s; see $LOG"; tail -20 "$LOG" >&2; exit 1
}

cmd_stop() {
  if [ ! -f "$MARKER" ]; then log "engine not started by this script; leaving it alone"; return; fi
  local pid; pid=$(cat "$MARKER")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # dockerd stops containers (10 s each, in parallel) and its managed containerd first.
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then log "dockerd $pid still running after 60 s"; exit 1; fi
  fi
  rm -f "$MARKER"
  log "dockerd stopped"
}

cmd_status() {
  if engine_up; then
    echo "engine: up ($(docker version -f 'server {{.Server.Version}}, client {{.Client.Version}}'))"
  else
    echo "engine: not answering"
  fi
  if [ -f "$MARKER" ]; then echo "started by this script: pid $(cat "$MARKER")"; else echo "started by this script: no"; fi
  echo "compose: $(docker compose version 2>/dev/null || echo missing)"
  echo "buildx: $(docker buildx version 2>/dev/null || echo missing)"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
