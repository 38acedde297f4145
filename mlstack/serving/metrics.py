"""Prometheus metrics of `mlstack serve` (`GET /metrics`).

- `mlstack_serving_requests_total{route,model,status}`: requests answered, by route template.
- `mlstack_serving_request_duration_seconds{route,model}`: latency histogram.
- `mlstack_serving_model_version{model}`: the registry version served (0: none or not numeric).
- `mlstack_serving_model_loaded{model}`: 1 once a model answers there.
- `mlstack_serving_model_loads_total{model,result}`: background loads, `success` / `failure`.
- `mlstack_serving_invocations_path_total{model,path}`: invocations answered by `fast` or `mlflow`.
- `mlstack_serving_model_info{model,name,version}`: 1 for the registered model name and version
  an endpoint serves now, 0 once replaced (dashboards and the stale-champion alert join on `name`).
- `mlstack_serving_model_load_failing{model}`: 1 since the endpoint's last load failed, 0 after
  a load succeeds (the model-failed-to-load alert; monitoring/prometheus/rules/mlstack.yml).

Per version (rollouts: champion and challenger side by side, docs/serving.md#rollouts):

- `mlstack_serving_model_requests_total{model,version,alias,mode,code}`: answers by registered
  model, version, alias (`champion`, `challenger`, ...), mode (`live`: the client got it;
  `shadow`: a copy the client never saw) and HTTP status code. Error ratio of the challenger:
  `sum(rate(...{alias="challenger",code=~"5.."}[5m])) / sum(rate(...{alias="challenger"}[5m]))`.
- `mlstack_serving_model_request_duration_seconds{model,version,alias,mode}`: latency histogram
  (scoring to the last byte sent; for shadow copies, the challenger's scoring time).
- `mlstack_serving_shadow_predictions_total{model,version,outcome}`: shadow predictions (rows)
  compared with the champion's, `agree` / `disagree` (classes equal; numbers within the
  tolerance); agreement rate = agree / (agree + disagree). `outcome="error"` counts copies the
  challenger failed.
- `mlstack_serving_shadow_dropped_total`: shadow copies dropped because the queue was full.
- `mlstack_serving_challenger_version{model}`: the challenger version followed (0: none).
- `mlstack_serving_guard_tripped{model,version}`: 1 while the guard keeps traffic away from that
  challenger version; `mlstack_serving_guard_trips_total{model}`: how often it tripped.

With several workers (`--workers N`), `mlstack serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory and each scrape aggregates all workers (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        self._init_rollout_metrics(registry)

    def _init_rollout_metrics(self, registry: CollectorRegistry | None) -> None:
        self.model_requests = Counter(
            "mlstack_serving_model_requests",
            "Answers by registered model, version, alias, mode (live/shadow) and HTTP code.",
            ("model", "version", "alias", "mode", "code"),
            registry=registry,
        )
        self.model_latency = Histogram(
            "mlstack_serving_model_request_duration_seconds",
            "Scoring time per model version, alias and mode (live/shadow).",
            ("model", "version", "alias", "mode"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.shadow_predictions = Counter(
            "mlstack_serving_shadow_predictions",
            "Shadow predictions compared with the champion's: agree, disagree, error.",
            ("model", "version", "outcome"),
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "mlstack_serving_shadow_dropped",
            "Shadow copies dropped because the shadow queue was full.",
            registry=registry,
        )
        self.challenger = Gauge(
            "mlstack_serving_challenger_version",
            "Challenger version followed beside the champion (0: none).",
            ("model",),
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.guard_tripped = Gauge(
            "mlstack_serving_guard_tripped",
            "1 while the guard keeps traffic away from this challenger version.",
            ("model", "version"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.guard_trips = Counter(
            "mlstack_serving_guard_trips",
            "Times the guard tripped and stopped a challenger's traffic.",
            ("model",),
            registry=registry,
        )
        # Per-process totals for /rollouts (Prometheus' multiprocess values are not readable).
        self._shadow_counts: dict[tuple[str, str], list[int]] = {}
        self._version_children: dict[tuple[str, str, str, str, int], tuple[Any, Any]] = {}

    def version_answer(
        self, model: str, version: str, alias: str, mode: str, status: int, seconds: float
    ) -> None:
        key = (model, version, alias, mode, status)
        children = self._version_children.get(key)
        if children is None:  # label lookups once per combination, not per request
            label = alias or "none"
            children = (
                self.model_requests.labels(model, version, label, mode, str(status)),
                self.model_latency.labels(model, version, label, mode),
            )
            self._version_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def shadow_compared(
        self, model: str, version: str, agree: int, disagree: int, error: bool = False
    ) -> None:
        counts = self._shadow_counts.setdefault((model, version), [0, 0, 0])
        if error:
            counts[2] += 1
            self.shadow_predictions.labels(model, version, "error").inc()
            return
        counts[0] += agree
        counts[1] += disagree
        if agree:
            self.shadow_predictions.labels(model, version, "agree").inc(agree)
        if disagree:
            self.shadow_predictions.labels(model, version, "disagree").inc(disagree)

    def shadow_summary(self, model: str, version: str) -> dict[str, int | float | None]:
        agree, disagree, errors = self._shadow_counts.get((model, version), (0, 0, 0))
        compared = agree + disagree
        return {
            "compared": compared,
            "agree": agree,
            "errors": errors,
            "agreement_rate": agree / compared if compared else None,
        }

    def challenger_version(self, model: str, version: str | None) -> None:
        self.challenger.labels(model).set(int(version) if version and version.isdigit() else 0)

    def guard_state(self, model: str, version: str | None, tripped: bool) -> None:
        if version is None:
            return
        self.guard_tripped.labels(model, version).set(1 if tripped else 0)
        if tripped:
            self.guard_trips.labels(model).inc()

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
