"""Rendering charts/mlstack the way users do: `helm template` with the values files of
charts/mlstack/examples/, at the oldest and newest Kubernetes versions the chart supports.

The matrix below is what the k8s tier checks; tests/k8s/test_chart_static.py also holds the
README's and docs/kubernetes.md's `helm install` commands to it, so the documented commands render
exactly the manifests the tests check."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mlstack"
VENV_BIN = REPO / ".venv" / "bin"
HELM = str(VENV_BIN / "helm")  # Helm 3 (3.18)
HELM4 = str(VENV_BIN / "helm4")  # Helm 4 (4.1): the chart must work with both
RELEASE = "mlstack"
NAMESPACE = "mlstack"
# Oldest: Chart.yaml's kubeVersion; newest: the newest kubernetes-validate has schemas for.
KUBE_VERSIONS = ("1.29.0", "1.37.0")

_EX = "charts/mlstack/examples"
# name -> the arguments after `helm install mlstack charts/mlstack` (paths relative to the repo).
VALUE_SETS: dict[str, list[str]] = {
    "defaults": ["--set", "postgresql.host=postgresql.example.internal"],
    "bundled": ["-f", f"{_EX}/trial.yaml"],
    "external": ["-f", f"{_EX}/production.yaml"],
    "auth": ["-f", f"{_EX}/production.yaml", "-f", f"{_EX}/auth.yaml"],
    "ingress": ["-f", f"{_EX}/production.yaml", "-f", f"{_EX}/ingress.yaml"],
    "monitoring": ["-f", f"{_EX}/production.yaml", "-f", f"{_EX}/monitoring.yaml"],
    "hpa-off": ["-f", f"{_EX}/production.yaml", "-f", f"{_EX}/no-hpa.yaml"],
}
# Kinds without a schema in kubernetes-validate (CRDs): the only documents allowed unvalidated.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def helm(*args: str, check: bool = True, binary: str = HELM) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [binary, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def render(
    args: list[str],
    kube_version: str = KUBE_VERSIONS[-1],
    release: str = RELEASE,
    binary: str = HELM,
) -> list[dict[str, Any]]:
    """`helm template` (hooks included) as parsed documents."""
    out = helm(
        "template", release, str(CHART), "--namespace", NAMESPACE,
        "--kube-version", kube_version, *args, binary=binary,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload (a CronJob's job template's), else None."""
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def hook(doc: dict[str, Any]) -> tuple[set[str], int] | None:
    """(hook phases, weight) of a hook resource, else None."""
    notes = doc["metadata"].get("annotations") or {}
    if "helm.sh/hook" not in notes:
        return None
    return set(notes["helm.sh/hook"].split(",")), int(notes.get("helm.sh/hook-weight", "0"))
