"""`mlstack serve`: an MLflow-compatible scoring server that follows the model registry.

- `app.py`: the raw ASGI app (routes, body limit, timeout, headers) run by `server.py` on uvicorn.
- `registry.py`: resolving the model URI, polling the registry, background loads, atomic swaps,
  discovery of the models holding the alias (`/models/<name>/invocations`).
- `model.py`: a loaded version; MLflow's own scoring code as the reference path.
- `fastpath.py`: JSON -> numpy -> scikit-learn estimator for plain numeric payloads.
- `metrics.py`: Prometheus metrics.
- `mlflow_engine.py`: `--engine mlflow`, exec'ing the stock `mlflow models serve`.
"""
