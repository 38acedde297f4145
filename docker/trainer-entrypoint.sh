#!/bin/sh
# Trainer images' entrypoint. With no arguments, or when the first one is an option (`--set k=v`,
# `--params F`, `--dry-run`), run this image's trainer with them: `python $MODEL/train.py ...`.
# Anything else is a command run as given, so the explicit form keeps working:
#   docker compose run --rm linear_model_trainer python linear_model/train.py --dry-run
set -eu
# An empty first argument (a script passing an unset variable) means "no command".
if [ "$#" -gt 0 ] && [ -z "$1" ]; then
  shift
fi
case "${1:-}" in
  "" | -*) set -- python "${MODEL:?MODEL is not set in this image}/train.py" "$@" ;;
esac
exec "$@"
