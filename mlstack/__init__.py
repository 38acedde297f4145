"""mlstack: the shared library behind the trainers, the serving endpoint and the local platform."""

import os

__version__ = "0.1.0"

# This network allows nothing but the package registries: MLflow's usage telemetry must never
# try to leave the machine, whatever entry point imported us first.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
