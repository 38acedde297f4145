"""Prometheus metrics of `mlstack serve` (`GET /metrics`).

- `mlstack_serving_requests_total{route,model,status}`: requests answered, by route template.
- `mlstack_serving_request_duration_seconds{route,model}`: latency histogram.
- `mlstack_serving_model_version{model}`: the registry version served (0: none or not numeric).
- `mlstack_serving_model_loaded{model}`: 1 once a model answers there.
- `mlstack_serving_model_loads_total{model,result}`: background loads, `success` / `failure`.
- `mlstack_serving_fast_path_total{model,path}`: invocations answered by `fast` or `mlflow`.
- `mlstack_serving_model_info{model,name,version}`: 1 for the registered model name and version
  an endpoint serves now, 0 once replaced (dashboards and the stale-champion alert join on `name`).
- `mlstack_serving_model_load_failing{model}`: 1 since the endpoint's last load failed, 0 after
  a load succeeds (the model-failed-to-load alert; monitoring/prometheus/rules/mlstack.yml).

With several workers (`--workers N`), `mlstack serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory and each scrape aggregates all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self._multiproc_dir = multiproc_dir
        # In multiprocess mode the values live in the directory's files and the scrape builds a
        # fresh registry; otherwise one private registry (not the global default one).
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if multiproc_dir else self.registry
        self.requests = Counter(
            "mlstack_serving_requests",
            "Requests answered, by route template, model and HTTP status.",
            ("route", "model", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "mlstack_serving_request_duration_seconds",
            "Time from request start to the last body byte sent.",
            ("route", "model"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.version = Gauge(
            "mlstack_serving_model_version",
            "Registry version served (0 when nothing or not a registry version).",
            ("model",),
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.loaded = Gauge(
            "mlstack_serving_model_loaded",
            "1 once a model answers for this endpoint.",
            ("model",),
            registry=registry,
            multiprocess_mode="max",
        )
        self.loads = Counter(
            "mlstack_serving_model_loads",
            "Background model loads by result.",
            ("model", "result"),
            registry=registry,
        )
        self.paths = Counter(
            "mlstack_serving_invocations_path",
            "Invocations answered by the fast path or MLflow's scoring code.",
            ("model", "path"),
            registry=registry,
        )
        self.info = Gauge(
            "mlstack_serving_model_info",
            "1 for the registered model name and version an endpoint serves, 0 once replaced.",
            ("model", "name", "version"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.load_failing = Gauge(
            "mlstack_serving_model_load_failing",
            "1 since the endpoint's last model load failed, 0 after a load succeeds.",
            ("model",),
            registry=registry,
            multiprocess_mode="max",
        )
        self._served: dict[str, tuple[str, str]] = {}  # model -> (name, version) labels in use
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, model, str(status)),
                self.latency.labels(route, model),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def model_served(self, model: str, version: str | None) -> None:
        self.version.labels(model).set(int(version) if version and version.isdigit() else 0)
        self.loaded.labels(model).set(1)
        self.loads.labels(model, "success").inc()
        self.load_failing.labels(model).set(0)

    def model_identity(self, model: str, name: str | None, version: str | None) -> None:
        """The registered name and version `model` (an endpoint) now serves, for model_info."""
        labels = (name or "", version or "")
        previous = self._served.get(model)
        if previous is not None and previous != labels:
            self.info.labels(model, *previous).set(0)
        self.info.labels(model, *labels).set(1)
        self._served[model] = labels

    def model_load_failed(self, model: str) -> None:
        self.loads.labels(model, "failure").inc()
        self.load_failing.labels(model).set(1)

    def render(self) -> tuple[bytes, str]:
        if self._multiproc_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(self._multiproc_dir))
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
