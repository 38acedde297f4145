"""The k8s tier, static half: charts/mlstack linted, rendered for every values set of the matrix at
the oldest and newest supported Kubernetes, every document validated strictly against that
version's schemas, and the chart's promises checked on what it renders: the hardening of every
pod, which pods hold which credentials, the hook order, Host headers MLflow accepts, the network
policies, and the schema refusing bad values by name."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import tomllib
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_render import (
    CHART,
    CRD_KINDS,
    HELM4,
    KUBE_VERSIONS,
    REPO,
    VALUE_SETS,
    component,
    helm,
    hook,
    pod_spec,
    render,
)
from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint

pytestmark = pytest.mark.k8s

PROJECT_UID = 10001
STORE_COMPONENTS = {"postgresql", "s3"}  # bundled stores: upstream images, their own users
DB_CREDENTIALS = {"POSTGRES_PASSWORD", "POSTGRES_USER"}
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
MATRIX = [(name, version) for name in VALUE_SETS for version in KUBE_VERSIONS]


@cache
def rendered(name: str, version: str = KUBE_VERSIONS[-1]) -> tuple[dict[str, Any], ...]:
    return tuple(render(VALUE_SETS[name], version))


def workloads(docs: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(doc, spec) for doc in docs if (spec := pod_spec(doc)) is not None]


def secret_env(container: dict[str, Any]) -> set[str]:
    """Names of the container's variables that come from a Secret."""
    return {
        env["name"]
        for env in container.get("env", [])
        if "secretKeyRef" in (env.get("valueFrom") or {})
    } | {
        "envFrom:" + ref["secretRef"]["name"]
        for ref in container.get("envFrom", [])
        if "secretRef" in ref
    }


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {env["name"]: env.get("value", "") for env in container.get("env", [])}


def allowed_hosts(docs: tuple[dict[str, Any], ...]) -> list[str]:
    tracking = next(d for d in docs if d["kind"] == "Deployment" and component(d) == "tracking")
    (arg,) = [
        a for a in tracking["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--allowed-hosts=")
    ]  # fmt: skip
    return arg.split("=", 1)[1].split(",")


def test_helm_lint_strict() -> None:
    for name, args in VALUE_SETS.items():
        result = helm("lint", "--strict", str(CHART), *args, check=False)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


def without_generated_values(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[Any]:
    """The documents with generated Secrets' values masked (random at every render)."""
    return [
        {**d, "data": dict.fromkeys(d.get("data") or {}, "*")} if d["kind"] == "Secret" else d
        for d in docs
    ]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_4_lints_and_renders_the_same_manifests(name: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VALUE_SETS[name], check=False, binary=HELM4)
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    helm4_docs = render(VALUE_SETS[name], binary=HELM4)
    assert without_generated_values(helm4_docs) == without_generated_values(rendered(name))


@pytest.mark.parametrize(("name", "version"), MATRIX)
def test_every_document_validates_strictly(name: str, version: str) -> None:
    docs = rendered(name, version)
    assert docs, f"{name} rendered nothing"
    unvalidated = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.append((doc["apiVersion"], doc["kind"]))
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} @ {version}: {doc['kind']} {doc['metadata']['name']}: {error}")
    assert set(unvalidated) <= CRD_KINDS, f"no schema for {unvalidated} at {version}"


def test_kube_version_below_the_oldest_supported_is_refused() -> None:
    result = helm(
        "template",
        "x",
        str(CHART),
        "--kube-version",
        "1.28.0",
        *VALUE_SETS["defaults"],
        check=False,
    )
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_pod_is_hardened(name: str) -> None:
    for doc, spec in workloads(rendered(name)):
        where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, where
        if component(doc) not in STORE_COMPONENTS:
            assert pod_sc.get("runAsUser") == PROJECT_UID, where
            assert pod_sc.get("runAsGroup") == PROJECT_UID, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], where
            image = container["image"]
            assert re.fullmatch(r"[^:@\s]+:[\w][\w.-]*", image), f"{where}: untagged {image}"
            assert not image.endswith(":latest"), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where


@pytest.mark.parametrize("name", VALUE_SETS)
def test_credentials_reach_only_the_pods_that_need_them(name: str) -> None:
    docs = rendered(name)
    held: dict[str, set[str]] = {}
    for doc, spec in workloads(docs):
        for container in spec["containers"]:
            held.setdefault(component(doc), set()).update(secret_env(container))
    auth = name == "auth"
    client_login = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} if auth else set()
    # Database: tracking and the migration Job only; S3: tracking and the bucket Job only.
    assert held["tracking"] >= DB_CREDENTIALS and held["tracking"] >= S3_CREDENTIALS
    assert held["migrate"] == DB_CREDENTIALS
    assert held["bucket"] == S3_CREDENTIALS
    # Serving and the trainers: nothing, or the tracking login in auth mode.
    assert held["serving"] == client_login
    assert held["trainer"] == client_login
    for who, names in held.items():
        if who not in {"tracking", "migrate", "postgresql"}:
            assert not names & DB_CREDENTIALS, f"{who} holds database credentials"
        if who not in {"tracking", "bucket", "s3"}:
            assert not names & S3_CREDENTIALS, f"{who} holds S3 credentials"
    # The auth secrets: tracking only, and only in auth mode.
    auth_secrets = {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    for who, names in held.items():
        expected = auth_secrets if (auth and who == "tracking") else set()
        assert names & auth_secrets == expected, who


def test_bundled_stores_use_generated_secrets_and_external_ones_the_named_secrets() -> None:
    bundled = rendered("bundled")
    secrets = {d["metadata"]["name"] for d in bundled if d["kind"] == "Secret"}
    assert secrets == {"mlstack-postgresql", "mlstack-s3"}
    for doc in bundled:
        if doc["kind"] == "Secret":
            assert hook(doc) == ({"pre-install", "pre-upgrade"}, -20)
    external = rendered("external")
    assert not [d for d in external if d["kind"] == "Secret"], "the chart must not create these"
    refs = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in workloads(external)
        for c in spec["containers"]
        for env in c.get("env", [])
        if "secretKeyRef" in (env.get("valueFrom") or {})
    }
    assert refs == {"mlstack-postgresql", "mlstack-s3"}


def serving_token_holders(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    """Components whose pods mount serving's tokens Secret, or name it in env, args or command."""
    holders = []
    for doc, spec in workloads(tuple(docs)):
        mounts = {
            v["name"]
            for v in spec.get("volumes", [])
            if v.get("secret", {}).get("secretName") == "mlstack-serving-tokens"
        }
        text = json.dumps(
            [c.get(k) for c in spec["containers"] for k in ("env", "args", "command")]
        )
        if mounts or "mlstack-serving-tokens" in text:
            holders.append(component(doc))
    return holders


def test_serving_tokens_are_a_secret_file_of_the_serving_pods_only() -> None:
    docs = rendered("auth")
    (secret,) = [
        d
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"] == "mlstack-serving-tokens"
    ]
    assert hook(secret) == ({"pre-install", "pre-upgrade"}, -20)
    token = base64.b64decode(secret["data"]["tokens"]).decode()
    assert len(token) >= 16 and secret["data"]["token"] == secret["data"]["tokens"]
    assert serving_token_holders(docs) == ["serving"]
    (serving,) = [d for d in docs if d["kind"] == "Deployment" and component(d) == "serving"]
    spec = pod_spec(serving)
    assert spec is not None
    (container,) = spec["containers"]
    # The path in the environment, the file from the Secret volume, read-only; no token anywhere
    # in the manifests but the Secret itself.
    assert env_of(container)["MLSTACK_SERVE_TOKENS_FILE"] == "/etc/mlstack/serving-tokens/tokens"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "serving-tokens"]
    assert mount == {
        "name": "serving-tokens",
        "mountPath": "/etc/mlstack/serving-tokens",
        "readOnly": True,
    }
    (volume,) = [v for v in spec["volumes"] if v["name"] == "serving-tokens"]
    assert volume["secret"]["items"] == [{"key": "tokens", "path": "tokens"}]
    others = [d for d in docs if d is not secret]
    assert token not in json.dumps(others)
    # Probes stay on the open routes.
    assert {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe")} == {
        "/health"
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    # Off by default; an existing Secret is mounted by name and none is generated.
    assert "MLSTACK_SERVE_TOKENS_FILE" not in env_of(
        next(
            c
            for d, s in workloads(rendered("external"))
            if component(d) == "serving"
            for c in s["containers"]
        )
    )
    named = render([*VALUE_SETS["auth"], "--set", "serving.auth.existingSecret=my-tokens"])
    assert not [d for d in named if d["kind"] == "Secret" and "serving" in d["metadata"]["name"]]
    (serving,) = [d for d in named if d["kind"] == "Deployment" and component(d) == "serving"]
    volumes = serving["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == ["my-tokens"]


def test_the_service_monitor_scrapes_serving_with_a_token_when_serving_wants_one() -> None:
    def serving_monitor(args: list[str]) -> dict[str, Any]:
        docs = render(args)
        (monitor,) = [
            d for d in docs if d["kind"] == "ServiceMonitor" and component(d) == "serving"
        ]
        return monitor["spec"]["endpoints"][0]

    plain = serving_monitor(VALUE_SETS["monitoring"])
    assert "authorization" not in plain
    with_auth = serving_monitor(
        [*VALUE_SETS["monitoring"], "-f", "charts/mlstack/examples/auth.yaml"]
    )
    assert with_auth["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "mlstack-serving-tokens", "key": "token"},
    }


def test_generated_passwords_are_random_per_install() -> None:
    first, second = (
        {d["metadata"]["name"]: d["data"] for d in render(VALUE_SETS["bundled"]) if d["kind"] == "Secret"}
        for _ in range(2)
    )  # fmt: skip
    assert first["mlstack-postgresql"]["password"] != second["mlstack-postgresql"]["password"]
    # Kept across upgrades: the template reads the live Secret first (lookup).
    assert "lookup" in (CHART / "templates" / "_helpers.tpl").read_text()


@pytest.mark.parametrize("name", ["bundled", "external"])
def test_hook_order_secrets_stores_migration_bucket_then_the_rollout(name: str) -> None:
    docs = rendered(name)
    hooks = {(d["kind"], component(d)): hook(d) for d in docs if hook(d)}
    weights = {key: weight for key, (phases, weight) in hooks.items()}
    for phases, _ in hooks.values():
        assert phases == {"pre-install", "pre-upgrade"}
    assert weights[("Job", "migrate")] < weights[("Job", "bucket")]
    if name == "bundled":
        assert weights[("Secret", "postgresql")] < weights[("StatefulSet", "postgresql")]
        assert weights[("StatefulSet", "postgresql")] < weights[("Job", "migrate")]
        assert weights[("StatefulSet", "s3")] < weights[("Job", "bucket")]
    # Everything else (tracking, serving, trainers) is a regular resource: applied after the hooks.
    regular = {(d["kind"], component(d)) for d in docs if not hook(d)}
    assert {("Deployment", "tracking"), ("Deployment", "serving")} <= regular
    # The migration runs in the Job; the replicas skip it.
    job = next(d for d in docs if d["kind"] == "Job" and component(d) == "migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "mlflow-server",
        "--upgrade-only",
    ]
    tracking = next(d for d in docs if d["kind"] == "Deployment" and component(d) == "tracking")
    assert (
        env_of(tracking["spec"]["template"]["spec"]["containers"][0])["MLSTACK_DB_UPGRADE"]
        == "false"
    )


def test_compose_keeps_the_migration_at_start() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    script = (REPO / "docker" / "mlflow-server.sh").read_text()
    assert "MLSTACK_DB_UPGRADE" not in compose  # the default: true
    assert 'case "${MLSTACK_DB_UPGRADE:-true}"' in script


@pytest.mark.parametrize("name", VALUE_SETS)
def test_tracking_accepts_the_host_headers_of_its_probes_and_clients(name: str) -> None:
    docs = rendered(name)
    hosts = allowed_hosts(docs)
    tracking = next(d for d in docs if d["kind"] == "Deployment" and component(d) == "tracking")
    container = tracking["spec"]["template"]["spec"]["containers"][0]
    port = container["ports"][0]["containerPort"]
    through_the_check = 0
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe_name]["httpGet"]
        headers = {h["name"].lower(): h["value"] for h in get.get("httpHeaders", [])}
        # The kubelet sends the pod IP as Host unless the probe names one.
        host = headers.get("host", f"10.244.3.17:{port}")
        if is_health_endpoint(get["path"]):
            assert probe_name == "livenessProbe", f"{probe_name} must go through the Host check"
            continue
        through_the_check += 1
        assert is_allowed_host_header(hosts, host), f"{name}: {probe_name} Host {host!r} refused"
    assert through_the_check == 2
    # Every client address the chart hands out, and every ingress host.
    for doc, spec in workloads(docs):
        for c in spec["containers"]:
            uri = env_of(c).get("MLFLOW_TRACKING_URI")
            if uri:
                hostport = uri.split("://", 1)[1].rstrip("/")
                assert is_allowed_host_header(hosts, hostport), f"{component(doc)}: {hostport}"
    for doc in docs:
        if doc["kind"] == "Ingress":
            for rule in doc["spec"]["rules"]:
                backend = rule["http"]["paths"][0]["backend"]["service"]["name"]
                if backend.endswith("-tracking"):
                    assert is_allowed_host_header(hosts, rule["host"])
                    assert is_allowed_host_header(hosts, rule["host"] + ":443")
    # A port-forward (`Host: localhost:5000`) works; a foreign name does not.
    assert is_allowed_host_header(hosts, "localhost:5000")
    assert not is_allowed_host_header(hosts, "evil.example.com")
    assert is_allowed_host_header(hosts, "10.1.2.3:5000") == (name == "monitoring")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_nothing_is_exposed_and_only_tracking_and_its_jobs_reach_the_stores(name: str) -> None:
    docs = rendered(name)
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert any(d["kind"] == "Ingress" for d in docs) == (name == "ingress")
    policies = {component(d): d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}

    def peers(spec: dict[str, Any], direction: str) -> set[str]:
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in spec.get(direction, [])
            for peer in rule.get("from" if direction == "ingress" else "to", [])
            if "podSelector" in peer and peer["podSelector"].get("matchLabels")
        }

    for who in ("serving", "trainer"):
        assert "Egress" in policies[who]["policyTypes"]
        assert peers(policies[who], "egress") == {"tracking"}
        open_rules = [r for r in policies[who]["egress"] if "to" not in r]
        assert all({p["port"] for p in r["ports"]} == {53} for r in open_rules), "DNS only"
    assert peers(policies["tracking"], "ingress") >= {"serving", "trainer"}
    if name == "bundled":
        assert peers(policies["postgresql"], "ingress") == {"tracking", "migrate"}
        assert peers(policies["s3"], "ingress") == {"tracking", "bucket"}


def test_serving_has_hpa_and_pdb_and_tracking_a_pdb() -> None:
    docs = rendered("external")
    kinds = {(d["kind"], component(d)) for d in docs}
    assert {
        ("HorizontalPodAutoscaler", "serving"),
        ("PodDisruptionBudget", "serving"),
        ("PodDisruptionBudget", "tracking"),
    } <= kinds
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    serving = next(d for d in docs if d["kind"] == "Deployment" and component(d) == "serving")
    assert "replicas" not in serving["spec"], "the HPA owns the replica count"
    off = rendered("hpa-off")
    assert not [d for d in off if d["kind"] == "HorizontalPodAutoscaler"]
    fixed = next(d for d in off if d["kind"] == "Deployment" and component(d) == "serving")
    assert fixed["spec"]["replicas"] == 3


def test_trainers_are_suspended_cronjobs_with_an_optional_params_configmap() -> None:
    docs = rendered("defaults")
    crons = {
        d["metadata"]["labels"]["mlstack.dev/model"]: d for d in docs if d["kind"] == "CronJob"
    }
    assert set(crons) == {"linear_model", "logistic_model", "random_forest_model"}
    assert all(c["spec"]["suspend"] is True for c in crons.values())
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    params = {"alpha": 0.5, "estimator": "ridge"}
    docs = render(
        [
            *VALUE_SETS["defaults"],
            "--set-json",
            f"trainers.models.linear_model.params={json.dumps(params)}",
        ]
    )
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert json.loads(config["data"]["params.json"]) == params
    cron = next(d for d in docs if d["kind"] == "CronJob" and "linear" in d["metadata"]["name"])
    container = pod_spec(cron)["containers"][0]  # type: ignore[index]
    assert container["args"][:2] == ["--params", "/etc/mlstack/params.json"]


# A bad value fails before anything renders, and the message names the key.
BAD_VALUES = [
    (["--set", "tracking.replicaCount=0"], "tracking.replicaCount"),
    (["--set", "image.tag=latest"], "image.tag"),
    (["--set", "trackng.replicaCount=2"], "trackng"),
    (["--set", "serving.autoscaling.targetCPUUtilizationPercentage=150"], "serving.autoscaling.targetCPUUtilizationPercentage"),
    (["--set", "auth.defaultPermission=ALL"], "auth.defaultPermission"),
    (["--set", "s3.endpoint=minio:9000"], "s3.endpoint"),
    (["--set", "trainers.models.linear_model.image.tag=latest"], "trainers.models.linear_model.image.tag"),
    (["--set", "postgresql.existingSecret="], "postgresql.existingSecret"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "key"), BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(args: list[str], key: str) -> None:
    result = helm("template", "x", str(CHART), *VALUE_SETS["defaults"], *args, check=False)
    assert result.returncode != 0
    assert key in result.stderr, result.stderr
    # Helm 4 names it as a JSON pointer (`/image/tag`), an unknown key by name.
    result = helm(
        "template", "x", str(CHART), *VALUE_SETS["defaults"], *args, check=False, binary=HELM4
    )
    assert result.returncode != 0
    named = ("/" + key.replace(".", "/"), f"'{key}' not allowed", f": {key}:")
    assert any(form in result.stderr for form in named), result.stderr


def test_the_one_required_value_is_named() -> None:
    result = helm("template", "x", str(CHART), check=False)
    assert result.returncode != 0
    assert "postgresql.host" in result.stderr


def documented_helm_commands() -> list[list[str]]:
    """`helm install|upgrade|template` lines of the README's and docs/kubernetes.md's code blocks,
    as argument lists after the chart path."""
    commands = []
    for page in (REPO / "README.md", REPO / "docs" / "kubernetes.md"):
        for block in re.findall(r"^```(?:sh|bash)?\n(.*?)^```", page.read_text(), re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if not line.strip().startswith("helm "):
                    continue
                words = shlex.split(line.split(" #")[0])
                if words[:2] in (["helm", "install"], ["helm", "upgrade"], ["helm", "template"]):
                    chart_at = words.index("charts/mlstack")
                    rest = words[chart_at + 1 :]
                    args = []
                    while rest:  # drop release-level flags; keep the values
                        word = rest.pop(0)
                        if word in ("--namespace", "-n", "--kube-version"):
                            rest.pop(0)
                        elif word not in ("--create-namespace", "--install", "--wait"):
                            args.append(word)
                    commands.append(args)
    return commands


def test_documented_commands_render_exactly_the_checked_value_sets() -> None:
    commands = documented_helm_commands()
    assert len(commands) >= 2, "the docs show a trial and a production install"
    checked = list(VALUE_SETS.values())
    for args in commands:
        assert args in checked, (
            f"documented `helm ... charts/mlstack {' '.join(args)}` is not in the k8s tier's matrix"
        )
    assert VALUE_SETS["bundled"] in commands and VALUE_SETS["external"] in commands


# Maps documented as one value (free-form or Kubernetes blocks), not key by key.
WHOLE_VALUES = {
    "podSecurityContext", "containerSecurityContext", "resources", "extraEnv", "nodeSelector",
    "tolerations", "affinity", "annotations", "labels", "params", "secretKeys", "persistence",
    "image",
}  # fmt: skip


def value_keys(values: dict[str, Any], path: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if here == "image" or (isinstance(value, dict) and value and key not in WHOLE_VALUES):
            if here == "trainers.models":
                keys |= {f"trainers.models.<model>.{k}" for m in value.values() for k in m}
            else:
                keys |= value_keys(value, here)
        else:
            keys.add(here)
    return keys


def test_every_value_is_in_the_documented_values_table() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    page = (REPO / "docs" / "kubernetes.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", page, re.M))
    missing = value_keys(values) - documented
    assert not missing, f"values not in docs/kubernetes.md's table: {sorted(missing)}"
    stale = {k for k in documented if "." in k or k in values} - value_keys(values)
    assert not stale, f"documented values the chart does not have: {sorted(stale)}"


def test_notes_name_the_next_commands_on_objects_the_release_has() -> None:
    # `helm install --dry-run=client` renders NOTES.txt without a cluster (Helm 4; Helm 3.18 asks
    # a cluster for its version first).
    result = helm(
        "install", "mlstack", str(CHART), "--namespace", "mlstack", "--dry-run=client",
        *VALUE_SETS["external"], binary=HELM4,
    )  # fmt: skip
    notes = result.stdout.split("NOTES:", 1)[1]
    docs = rendered("external")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    (cron,) = re.findall(r"create job --from=cronjob/(\S+)", notes)
    assert ("CronJob", cron) in names
    services = re.findall(r"port-forward svc/(\S+)", notes)
    assert len(services) == 2 and all(("Service", s) in names for s in services)
    (job,) = re.findall(r"logs job/(\S+)", notes)
    assert ("Job", job) in names


def test_app_version_is_the_project_version_and_the_default_image_tag() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    images = {c["image"] for _, spec in workloads(rendered("defaults")) for c in spec["containers"]}
    assert images == {
        f"mlstack-mlflow:{project['version']}",
        *(
            f"mlstack-{m}_trainer:{project['version']}"
            for m in ("linear_model", "logistic_model", "random_forest_model")
        ),
    }


def test_start_script_refuses_a_bad_upgrade_switch_before_doing_anything() -> None:
    env = {"PATH": "/usr/bin:/bin", "MLSTACK_DB_UPGRADE": "yes please"}
    result = subprocess.run(
        ["sh", str(REPO / "docker" / "mlflow-server.sh"), "--host=0.0.0.0"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "MLSTACK_DB_UPGRADE must be true or false, not 'yes please'" in result.stderr
