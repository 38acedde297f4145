"""A SIMULATION of the parts of Kubernetes the chart relies on, run on a Docker engine.

No Kubernetes cluster can run on the machines this project is tested on (no registry ships
kube-apiserver, kubelet or k3s, and kind needs a node image from a registry), so this harness runs
the chart's *rendered manifests* with `docker run`, using the same images. It reads only the
rendered documents (plus the Secrets a user would create with kubectl): no second copy of the
configuration. What it simulates, and how:

  Pods         one container per replica: the manifest's image, command (entrypoint) and args,
               env (value, secretKeyRef, configMapKeyRef resolved from the documents; a missing
               Secret fails as CreateContainerConfigError would), runAsUser/runAsGroup (--user),
               fsGroup (--group-add), readOnlyRootFilesystem (--read-only), capabilities
               drop ALL (--cap-drop ALL), allowPrivilegeEscalation false (no-new-privileges),
               resource limits (--memory, --cpus)
  Volumes      emptyDir -> a fresh empty 0777 directory (a tmpfs for medium: Memory),
               configMap -> read-only files,
               volumeClaimTemplates -> a named Docker volume per claim
  Services     one network; each pod gets its Services' names (short, namespaced, cluster-domain)
               as network aliases when the selector matches its labels; port == targetPort
  Hooks        pre-install hooks in Helm's order (weight, then kind, then name); a Job runs to
               completion and must exit 0 before the next hook (backoffLimit is not retried)
  Probes       httpGet (path, port, httpHeaders such as Host) from outside the pod, as the kubelet
               does; exec probes with `docker exec`
  CronJobs     `kubectl create job --from=cronjob/NAME`: the job template run once

Not simulated: the scheduler, restarts, rolling updates, HPA and PDB behaviour, NetworkPolicy
enforcement (tests/k8s/test_chart_static.py checks the policies as data) and RBAC. Run
scripts/k8s-smoke.sh on a real cluster for those.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

# Helm's install order of kinds (pkg/release/util/kind_sorter.go), the part this chart uses.
KIND_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
    "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
    "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
    "IngressClass", "Ingress", "APIService",
]  # fmt: skip


class SimulationError(AssertionError):
    """Something Kubernetes would also have refused or reported (a missing Secret, a failed Job,
    a pod that never turned Ready)."""


def docker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise SimulationError(
            f"docker {' '.join(args[:3])} ... exited {result.returncode}: {result.stderr}"
        )
    return result


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * factor)
    return int(quantity)


def cpus(quantity: str) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def hook_key(doc: dict[str, Any]) -> tuple[int, int, str]:
    notes = doc["metadata"].get("annotations") or {}
    kind = doc["kind"]
    order = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return int(notes.get("helm.sh/hook-weight", "0")), order, doc["metadata"]["name"]


def is_hook(doc: dict[str, Any], phase: str = "pre-install") -> bool:
    notes = doc["metadata"].get("annotations") or {}
    return phase in notes.get("helm.sh/hook", "").split(",")


@dataclass
class Pod:
    """One simulated pod: a container named after it."""

    name: str
    container: str
    labels: dict[str, str]
    spec: dict[str, Any]
    ip: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        result = docker("logs", self.container, check=False)
        return result.stdout + result.stderr


@dataclass
class Simulation:
    """The documents of one rendered release (plus user-created Secrets), run on `network`."""

    documents: list[dict[str, Any]]
    namespace: str
    prefix: str = field(default_factory=lambda: f"mlstack-k8s-sim-{uuid.uuid4().hex[:6]}")
    pods: list[Pod] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlstack-k8s-sim-")))
    events: list[str] = field(default_factory=list)

    @property
    def network(self) -> str:
        return self.prefix

    # ---------------------------------------------------------------- the objects, as data
    def find(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.documents:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise SimulationError(f"{kind} {name!r} not found (Kubernetes: CreateContainerConfigError)")

    def secret_value(self, name: str, key: str) -> str:
        secret = self.find("Secret", name)
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key])
        if key in (secret.get("data") or {}):
            return base64.b64decode(secret["data"][key]).decode()
        raise SimulationError(f"Secret {name!r} has no key {key!r}")

    def config_value(self, name: str, key: str) -> str:
        return str(self.find("ConfigMap", name)["data"][key])

    def services_for(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        found = []
        for doc in self.documents:
            if doc["kind"] != "Service":
                continue
            selector = doc["spec"].get("selector") or {}
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                for port in doc["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    if isinstance(target, int) and target != port["port"]:
                        raise SimulationError(
                            f"Service {doc['metadata']['name']}: port != targetPort is not simulated"
                        )
                found.append(doc)
        return found

    # ---------------------------------------------------------------- pods
    def resolve_env(self, container: dict[str, Any], pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for ref in container.get("envFrom", []):
            if "secretRef" in ref:
                secret = self.find("Secret", ref["secretRef"]["name"])
                for key in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
                    env[key] = self.secret_value(ref["secretRef"]["name"], key)
            if "configMapRef" in ref:
                env.update(self.find("ConfigMap", ref["configMapRef"]["name"])["data"])
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = str(item.get("value", ""))
            elif "secretKeyRef" in source:
                env[item["name"]] = self.secret_value(
                    source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]
                )
            elif "configMapKeyRef" in source:
                env[item["name"]] = self.config_value(
                    source["configMapKeyRef"]["name"], source["configMapKeyRef"]["key"]
                )
            elif "fieldRef" in source and source["fieldRef"]["fieldPath"] == "metadata.name":
                env[item["name"]] = pod_name
            else:
                raise SimulationError(f"env {item['name']}: {source} is not simulated")
        return env

    def run_args(
        self, pod_name: str, labels: dict[str, str], spec: dict[str, Any], claims: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        (container,) = spec["containers"]  # the chart's pods have one container each
        pod_sc = spec.get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        args = ["--name", f"{self.prefix}-{pod_name}", "--hostname", pod_name[:63],
                "--network", self.network, "--label", f"mlstack.k8s-sim={self.prefix}"]  # fmt: skip
        for service in self.services_for(labels):
            name = service["metadata"]["name"]
            for alias in (name, f"{name}.{self.namespace}", f"{name}.{self.namespace}.svc",
                          f"{name}.{self.namespace}.svc.cluster.local"):  # fmt: skip
                args += ["--network-alias", alias]
        if "runAsUser" in sc:
            args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if sc.get("runAsNonRoot") and sc.get("runAsUser", 0) == 0:
            raise SimulationError(f"{pod_name}: runAsNonRoot without a non-zero runAsUser")
        if "fsGroup" in pod_sc:
            args += ["--group-add", str(pod_sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if "ALL" in ((sc.get("capabilities") or {}).get("drop") or []):
            args += ["--cap-drop", "ALL"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges:true"]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", str(memory_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", f"{cpus(limits['cpu']):g}"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            path = mount["mountPath"]
            volume = volumes.get(mount["name"])
            if mount["name"] in claims:
                args += ["-v", f"{claims[mount['name']]}:{path}"]
            elif volume and "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
                size = volume["emptyDir"].get("sizeLimit")
                options = "mode=1777" + (f",size={memory_bytes(size)}" if size else "")
                args += ["--tmpfs", f"{path}:{options}"]
            elif volume and "emptyDir" in volume:
                # What the kubelet makes: a fresh, empty, world-writable directory on the node's
                # disk. (Not a Docker tmpfs: that copies the mode of the image's folder at the
                # same path, root-owned 2775 in the offline postgres image, which Kubernetes
                # does not.) sizeLimit is enforced by eviction there; not simulated.
                folder = self.workdir / f"{pod_name}-{mount['name']}"
                folder.mkdir()
                folder.chmod(0o777)
                args += ["-v", f"{folder}:{path}"]
            elif volume and "configMap" in volume:
                folder = self.workdir / f"{pod_name}-{mount['name']}"
                folder.mkdir(mode=0o755)
                for key, value in self.find("ConfigMap", volume["configMap"]["name"])[
                    "data"
                ].items():
                    (folder / key).write_text(value)
                    (folder / key).chmod(0o644)
                args += ["-v", f"{folder}:{path}:ro"]
            else:
                raise SimulationError(f"{pod_name}: volume {mount['name']} is not simulated")
        env = self.resolve_env(container, pod_name)
        for name in env:
            args += ["-e", name]  # the value comes from the docker client's environment
        command = container.get("command") or []
        if command:
            args += ["--entrypoint", command[0]]
        args.append(container["image"])
        args += [*command[1:], *(container.get("args") or [])]
        return args, env

    def start_pod(
        self,
        pod_name: str,
        labels: dict[str, str],
        spec: dict[str, Any],
        claims: dict[str, str] | None = None,
    ) -> Pod:
        args, env = self.run_args(pod_name, labels, spec, claims or {})
        docker("run", "-d", *args, env=env)
        pod = Pod(pod_name, f"{self.prefix}-{pod_name}", labels, spec, env=env)
        inspect = docker(
            "inspect", "-f", "{{json .NetworkSettings.Networks}}", pod.container
        ).stdout
        pod.ip = json.loads(inspect).get(self.network, {}).get("IPAddress", "")
        self.pods.append(pod)
        self.events.append(f"started {pod_name} ({pod.ip})")
        return pod

    def run_job_spec(self, name: str, template: dict[str, Any], timeout: float) -> Pod:
        """A Job's pod run to completion; a non-zero exit is the Job failing."""
        pod = self.start_pod(
            f"{name}-{uuid.uuid4().hex[:5]}", template["metadata"]["labels"], template["spec"]
        )
        code = docker("wait", pod.container, timeout=timeout).stdout.strip()
        self.events.append(f"job {name} exited {code}")
        if code != "0":
            raise SimulationError(f"Job {name} failed (exit {code}):\n{pod.logs()[-4000:]}")
        return pod

    def run_job(self, doc: dict[str, Any], timeout: float = 600) -> Pod:
        return self.run_job_spec(doc["metadata"]["name"], doc["spec"]["template"], timeout)

    def run_cronjob_now(self, name: str, timeout: float = 900) -> Pod:
        """`kubectl create job --from=cronjob/NAME`."""
        cron = self.find("CronJob", name)
        return self.run_job_spec(name, cron["spec"]["jobTemplate"]["spec"]["template"], timeout)

    def start_workload(self, doc: dict[str, Any], replicas: int | None = None) -> list[Pod]:
        name = doc["metadata"]["name"]
        count = replicas if replicas is not None else int(doc["spec"].get("replicas", 1))
        template = doc["spec"]["template"]
        pods = []
        for i in range(count):
            claims = {}
            if doc["kind"] == "StatefulSet":
                pod_name = f"{name}-{i}"
                for claim in doc["spec"].get("volumeClaimTemplates", []):
                    volume = f"{self.prefix}-{claim['metadata']['name']}-{pod_name}"
                    docker("volume", "create", "--label", f"mlstack.k8s-sim={self.prefix}", volume)
                    claims[claim["metadata"]["name"]] = volume
            else:
                pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
            pods.append(
                self.start_pod(pod_name, template["metadata"]["labels"], template["spec"], claims)
            )
        return pods

    # ---------------------------------------------------------------- probes
    def probe_ok(self, pod: Pod, probe: dict[str, Any]) -> bool:
        (container,) = pod.spec["containers"]
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            try:
                answer = requests.get(
                    f"http://{pod.ip}:{port}{get['path']}",
                    headers=headers,
                    timeout=probe.get("timeoutSeconds", 1) + 2,
                )
            except requests.RequestException:
                return False
            return 200 <= answer.status_code < 400
        if "exec" in probe:
            return (
                docker("exec", pod.container, *probe["exec"]["command"], check=False).returncode
                == 0
            )
        raise SimulationError(f"probe {probe} is not simulated")

    def wait_for(self, pod: Pod, probe_name: str, timeout: float) -> None:
        (container,) = pod.spec["containers"]
        probe = container.get(probe_name)
        if probe is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe_ok(pod, probe):
                self.events.append(f"{pod.name}: {probe_name} passed")
                return
            state = docker("inspect", "-f", "{{.State.Status}}", pod.container).stdout.strip()
            if state != "running":
                raise SimulationError(
                    f"{pod.name} is {state} before its {probe_name} passed:\n{pod.logs()[-4000:]}"
                )
            time.sleep(2)
        raise SimulationError(
            f"{pod.name}: {probe_name} did not pass within {timeout:g} s:\n{pod.logs()[-4000:]}"
        )

    def wait_ready(
        self,
        pods: list[Pod],
        timeout: float = 420,
        probes: tuple[str, ...] = ("startupProbe", "readinessProbe"),
    ) -> None:
        for pod in pods:
            for probe_name in probes:
                self.wait_for(pod, probe_name, timeout)

    # ---------------------------------------------------------------- lifecycle
    def create_network(self) -> None:
        docker("network", "create", "--label", f"mlstack.k8s-sim={self.prefix}", self.network)

    def hooks(self, phase: str = "pre-install") -> list[dict[str, Any]]:
        return sorted((d for d in self.documents if is_hook(d, phase)), key=hook_key)

    def regular(self, kind: str) -> list[dict[str, Any]]:
        return [
            d
            for d in self.documents
            if d["kind"] == kind
            and not (d["metadata"].get("annotations") or {}).get("helm.sh/hook")
        ]

    def run_hooks(self, phase: str = "pre-install") -> list[Pod]:
        """Helm's hook sequence: each Job must succeed before the next hook; StatefulSets start."""
        job_pods = []
        for doc in self.hooks(phase):
            if doc["kind"] == "Job":
                job_pods.append(self.run_job(doc))
            elif doc["kind"] == "StatefulSet":
                self.wait_ready(self.start_workload(doc), probes=("readinessProbe",))
        return job_pods

    def diagnostics(self) -> str:
        lines = ["--- simulation events", *self.events]
        for pod in self.pods:
            lines += [f"--- logs of {pod.name}", pod.logs()[-3000:]]
        return "\n".join(lines)

    def teardown(self) -> None:
        """Remove exactly what this simulation created (its label), never anything else."""
        label = f"label=mlstack.k8s-sim={self.prefix}"
        ids = docker("ps", "-aq", "--filter", label, check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        volumes = docker("volume", "ls", "-q", "--filter", label, check=False).stdout.split()
        if volumes:
            docker("volume", "rm", *volumes, check=False)
        docker("network", "rm", self.network, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
