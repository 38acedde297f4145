"""Serving's metrics the monitoring overlay relies on (mlstack/serving/metrics.py), read back from
the Prometheus text it renders with prometheus_client's own parser: the model info and load-failure
gauges, and several worker processes adding up in one scrape (multiprocess mode), which is why one
scrape target covers every worker (monitoring/prometheus/prometheus.yml).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlstack.serving.metrics import ServingMetrics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def samples(metrics: ServingMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: ServingMetrics, metric: str, /, **labels: str) -> float | None:
    return samples(metrics).get((metric, frozenset(labels.items())))


def test_model_info_follows_the_served_version() -> None:
    metrics = ServingMetrics()
    metrics.model_served("default", "3")
    metrics.model_identity("default", "linear_model", "3")
    assert value(metrics, "mlstack_serving_model_info", model="default", name="linear_model",
                 version="3") == 1.0  # fmt: skip
    metrics.model_served("default", "4")
    metrics.model_identity("default", "linear_model", "4")
    info = {
        dict(labels)["version"]: v
        for (name, labels), v in samples(metrics).items()
        if name == "mlstack_serving_model_info"
    }
    assert info == {"3": 0.0, "4": 1.0}
    assert value(metrics, "mlstack_serving_model_version", model="default") == 4.0


def test_load_failing_is_set_by_a_failure_and_cleared_by_a_success() -> None:
    metrics = ServingMetrics()
    metrics.model_load_failed("default")
    assert value(metrics, "mlstack_serving_model_load_failing", model="default") == 1.0
    assert (
        value(metrics, "mlstack_serving_model_loads_total", model="default", result="failure")
        == 1.0
    )
    metrics.model_served("default", "2")
    assert value(metrics, "mlstack_serving_model_load_failing", model="default") == 0.0


WORKER = """
import sys
from pathlib import Path
from mlstack.serving.metrics import ServingMetrics
metrics = ServingMetrics(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    metrics.observe("/invocations", "default", 200, 0.003)
metrics.model_served("default", "5")
metrics.model_identity("default", "linear_model", "5")
if sys.argv[3] == "fail":
    metrics.model_load_failed("default")
"""


def test_several_worker_processes_add_up_in_one_scrape(tmp_path: Path) -> None:
    # Two real processes write their samples, as uvicorn's workers do; a third renders.
    env_dir = tmp_path / "multiproc"
    env_dir.mkdir()
    for count, outcome in ((7, "ok"), (5, "fail")):
        subprocess.run(
            [sys.executable, "-c", WORKER, str(env_dir), str(count), outcome],
            cwd=REPO,
            env={"PROMETHEUS_MULTIPROC_DIR": str(env_dir), "PATH": "/usr/bin:/bin"},
            check=True,
            timeout=60,
        )
    scrape = ServingMetrics(env_dir)
    assert (
        value(scrape, "mlstack_serving_requests_total", route="/invocations", model="default",
              status="200")
        == 12.0
    )  # fmt: skip
    assert (
        value(scrape, "mlstack_serving_request_duration_seconds_count", route="/invocations",
              model="default")
        == 12.0
    )  # fmt: skip
    # Gauges: the version info is 1 if any worker serves it; failing if any worker failed.
    assert value(scrape, "mlstack_serving_model_info", model="default", name="linear_model",
                 version="5") == 1.0  # fmt: skip
    assert value(scrape, "mlstack_serving_model_load_failing", model="default") == 1.0
