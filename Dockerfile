# Trainer image, one per model folder: `docker compose build linear_model_trainer`, or
#   docker build --build-arg MODEL=linear_model -t mlstack-linear_model_trainer .
# Carries only what training needs: MLflow's client (mlflow-skinny), scikit-learn, pandas, numpy,
# matplotlib, skops, pydantic(-settings), requests; no tracking server, no S3 client or credentials.
# Everything above `ARG MODEL` is identical for the three trainers (and for Dockerfile.mlflow), so
# those layers are built once and shared. No `# syntax=` line on purpose: it makes BuildKit pull a
# frontend image, and the builtin frontend does all this file needs.

# Any Python 3.11 image works (a private mirror, or tests/e2e's offline stand-in).
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# An unprivileged user; the venv and the code stay root-owned, so the process cannot change them.
# `python -m venv`, not a path: official images keep python in /usr/local/bin, Debian's in /usr/bin.
ARG UID=10001
RUN groupadd --gid "${UID}" mlstack \
    && useradd --uid "${UID}" --gid "${UID}" --create-home --shell /usr/sbin/nologin mlstack \
    && python -m venv "${VIRTUAL_ENV}"

# The trainer dependencies: pyproject.toml's core list (the one place they are named), pinned by
# constraints.txt (the one lock file). Bind mounts keep both files out of the image.
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    --mount=type=bind,source=constraints.txt,target=/tmp/build/constraints.txt \
    --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('/tmp/build/pyproject.toml', 'rb')); print('\n'.join(p['project']['dependencies']))" \
        > /tmp/build-requirements.txt \
    && pip install -r /tmp/build-requirements.txt -c /tmp/build/constraints.txt \
    && rm /tmp/build-requirements.txt

# From here on the layers are per model: its requirements.txt on top, same pins. (COPY, not a bind
# mount: the builtin frontend does not expand ${MODEL} in a mount's source.)
ARG MODEL=linear_model
COPY ${MODEL}/requirements.txt /tmp/build/model-requirements.txt
RUN --mount=type=bind,source=constraints.txt,target=/tmp/build/constraints.txt \
    --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/build/model-requirements.txt -c /tmp/build/constraints.txt

# Code last: it changes most often. `mlstack` is imported from /app (PYTHONPATH), not pip-installed,
# so no build backend has to be fetched for it.
WORKDIR /app
COPY mlstack/ /app/mlstack/
COPY ${MODEL}/ /app/${MODEL}/
# Bytecode now: the root filesystem is read-only at run time (and PYTHONDONTWRITEBYTECODE is set),
# so without it every trainer run would compile mlstack/ again before it starts.
RUN python -m compileall -q /app/mlstack "/app/${MODEL}"
COPY docker/trainer-entrypoint.sh /usr/local/bin/mlstack-train

# Runs have no .git to read the commit from: `GIT_COMMIT=$(git rev-parse HEAD) docker compose build`.
ARG GIT_COMMIT=""
# GIT_PYTHON_REFRESH=quiet: MLflow looks for a git executable on every run and warns at length
# when there is none; the commit tag comes from MLSTACK_GIT_COMMIT instead.
ENV PYTHONPATH=/app \
    MPLCONFIGDIR=/tmp/matplotlib \
    GIT_PYTHON_REFRESH=quiet \
    MODEL=${MODEL} \
    MLSTACK_GIT_COMMIT=${GIT_COMMIT}

USER ${UID}:${UID}
# `docker compose run --rm <model>_trainer [--set k=v ...]` runs `python <model>/train.py [...]`;
# a first argument that is not an option is a command of its own (`python linear_model/train.py`).
ENTRYPOINT ["mlstack-train"]
CMD []
