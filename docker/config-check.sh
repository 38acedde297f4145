#!/bin/sh
# The `config-check` service: refuse, before any server starts, the docker.env values an upstream
# image would refuse only by failing in its own log (and then restarting). Each problem is named
# with its variable; exit 2 when there is any, 0 otherwise.
#   mlstack-config-check        check the environment (compose passes docker.env)
#   mlstack-config-check -h     this text
# Rules, as the images enforce them:
#   MINIO_ROOT_USER      at least 3 characters   (MinIO/Silo: "MINIO_ROOT_USER length should be
#   MINIO_ROOT_PASSWORD  at least 8 characters    at least 3, and MINIO_ROOT_PASSWORD length at
#                                                  least 8 characters"; it exits at start)
#   both or neither      MinIO exits "Missing credential environment variable" with only one
#   POSTGRES_PASSWORD    set (the postgres image refuses to initialise a volume without it)
# Lengths are in bytes, as MinIO's Go code counts them (the same as characters for ASCII), of the
# value exactly as compose hands it over from docker.env.
# POSIX sh: the image's /bin/sh is dash, which has no pipefail in bookworm; the one pipe below
# (printf | wc) cannot fail in a way that matters.
set -eu

case "${1:-}" in
  -h | --help)
    sed -n '2,/^# POSIX sh/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *)
    echo "mlstack-config-check: no arguments expected (got '$1'); -h for help" >&2
    exit 2
    ;;
esac

problems=0
problem() {
  echo "config-check: $*" >&2
  problems=$((problems + 1))
}

# length_of NAME: "unset", or the length of $NAME's value in bytes.
length_of() {
  if eval "[ -z \"\${$1+x}\" ]"; then
    echo unset
  else
    eval "printf '%s' \"\${$1}\"" | wc -c | tr -d ' '
  fi
}

user_len=$(length_of MINIO_ROOT_USER)
password_len=$(length_of MINIO_ROOT_PASSWORD)
if [ "$user_len" = unset ] && [ "$password_len" != unset ]; then
  problem "MINIO_ROOT_USER is not set but MINIO_ROOT_PASSWORD is: set both in docker.env"
elif [ "$user_len" != unset ] && [ "$password_len" = unset ]; then
  problem "MINIO_ROOT_PASSWORD is not set but MINIO_ROOT_USER is: set both in docker.env"
fi
# Empty counts as wrong too: MinIO then ignores both and silently falls back to its built-in
# minioadmin/minioadmin, which the AWS_* keys of mlflow and create-bucket do not match.
if [ "$user_len" != unset ] && [ "$user_len" -lt 3 ]; then
  problem "MINIO_ROOT_USER (docker.env) is $user_len characters long; the S3 server" \
    "(MinIO/Silo) refuses to start with a root user under 3 characters"
fi
if [ "$password_len" != unset ] && [ "$password_len" -lt 8 ]; then
  problem "MINIO_ROOT_PASSWORD (docker.env) is $password_len characters long; the S3 server" \
    "(MinIO/Silo) refuses to start with a root password under 8 characters"
fi
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
  problem "POSTGRES_PASSWORD (docker.env) is empty or not set; the postgres image refuses to" \
    "initialise its volume without one"
fi

if [ "$problems" -gt 0 ]; then
  echo "config-check: $problems problem(s) in docker.env; nothing was started. Fix them, then" \
    "\`docker compose up -d\` again." >&2
  exit 2
fi
echo "config-check: docker.env passes (MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, POSTGRES_PASSWORD)"
