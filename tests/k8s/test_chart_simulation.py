"""The k8s tier, runtime half: the chart's rendered manifests run by a SIMULATION of Kubernetes on
the Docker engine (tests/k8s/kube_simulation.py says what is simulated and what is not), with the
project's images, in Helm's hook order: migration Job, bucket Job, two tracking replicas, serving;
then one trainer from its CronJob's job template.

The release is production.yaml (external stores, existingSecret credentials) with
tests/k8s/simulation-values.yaml on top; the test starts the "external" PostgreSQL and S3 beside
it, and creates the two Secrets a user creates with kubectl. Outcomes are checked through
independent clients: PostgreSQL's own statement log and psql, boto3 against the S3 server, HTTP
requests with the Service names as Host, and `docker inspect` of what each container holds."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from chart_render import REPO, VALUE_SETS, render
from kube_simulation import Pod, Simulation, docker

pytestmark = pytest.mark.k8s

ONLINE = os.environ.get("MLSTACK_E2E_ONLINE", "").lower() in ("1", "true", "yes")
PYTHON_IMAGE = (
    "python:3.11.17-slim-bookworm" if ONLINE else "mlstack-offline/python:3.11-slim-bookworm"
)
# The "external" stores: what docker-compose.yml runs, or its offline stand-ins.
POSTGRES_IMAGE = "postgres:17.11-bookworm" if ONLINE else "mlstack-offline/postgres:17"
S3_IMAGE = (
    "pgsty/silo:RELEASE.2026-09-16T00-00-00Z" if ONLINE else "mlstack-offline/minio:latest-standin"
)
SIM_VALUES = [*VALUE_SETS["external"], "-f", "tests/k8s/simulation-values.yaml"]
EXAMPLES = "charts/mlstack/examples"
MODEL = "linear_model"
BUILD_TIMEOUT = 25 * 60


def say(line: str) -> None:
    print(f"[k8s simulation] {line}", file=sys.stderr, flush=True)


def build_images(documents: list[dict[str, Any]]) -> None:
    """The images the rendered release names, built from this checkout (BuildKit reuses the
    Docker tier's layers); the offline stand-in base first where no registry is reachable."""
    if not ONLINE:
        subprocess.run(
            [str(REPO / "tests/e2e/build-offline-images.sh"), "python", "postgres", "minio"],
            check=True,
            timeout=1800,
        )
    images = {
        c["image"]
        for d in documents
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    trainer = next(
        d
        for d in documents
        if d["kind"] == "CronJob" and d["metadata"]["labels"]["mlstack.dev/model"] == MODEL
    )
    trainer_image = trainer["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    (platform_image,) = images
    common = ["build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}"]
    env = {"DOCKER_BUILDKIT": "1"}
    docker(
        *common,
        "-f",
        "Dockerfile.mlflow",
        "-t",
        platform_image,
        str(REPO),
        env=env,
        timeout=BUILD_TIMEOUT,
    )
    docker(
        *common,
        "-f",
        "Dockerfile",
        "--build-arg",
        f"MODEL={MODEL}",
        "-t",
        trainer_image,
        str(REPO),
        env=env,
        timeout=BUILD_TIMEOUT,
    )


def user_secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    """What `kubectl create secret generic NAME --from-literal=...` stores."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }  # fmt: skip


@dataclass
class Release:
    sim: Simulation
    postgres: str  # container names of the external stores
    s3: str
    s3_keys: tuple[str, str]
    secret_values: set[str]
    migrate: Pod
    bucket: Pod
    tracking: list[Pod]
    serving: list[Pod]
    trainer: Pod
    tracking_service: str
    serving_service: str

    def psql(self, sql: str) -> list[list[str]]:
        out = docker(
            "exec", self.postgres, "psql", "-U", "mlflow", "-d", "mlflow", "-AtF", "\t", "-c", sql
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def client(self, code: str, *args: str) -> str:
        """Python in a throwaway pod on the release's network (a client inside the cluster)."""
        image = self.serving[0].spec["containers"][0]["image"]
        return docker(
            "run", "--rm", "--network", self.sim.network, "--label", f"mlstack.k8s-sim={self.sim.prefix}",
            "--read-only", "--cap-drop", "ALL", "--user", "10001:10001", "--entrypoint", "python",
            image, "-c", code, *args, timeout=120,
        ).stdout  # fmt: skip


@pytest.fixture(scope="module")
def release() -> Iterator[Release]:
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(step: str) -> None:
        timings[step] = time.monotonic() - started

    pg_password, s3_user, s3_password = secrets.token_hex(16), "mlstack-sim", secrets.token_hex(20)
    documents = [
        *render(SIM_VALUES),
        user_secret("mlstack-postgresql", {"username": "mlflow", "password": pg_password}),
        user_secret("mlstack-s3", {"access-key-id": s3_user, "secret-access-key": s3_password}),
    ]
    build_images(documents)
    mark("images")
    sim = Simulation(documents, namespace="mlstack")
    try:
        sim.create_network()
        # The external stores, started by the test as a cloud's managed services would be. PostgreSQL
        # logs every DDL statement with the client's address: who migrated is read from there.
        postgres, s3 = f"{sim.prefix}-external-postgresql", f"{sim.prefix}-external-s3"
        docker(
            "run", "-d", "--name", postgres, "--network", sim.network, "--network-alias", "external-postgresql",
            "--label", f"mlstack.k8s-sim={sim.prefix}", "-e", "POSTGRES_USER=mlflow", "-e", "POSTGRES_DB=mlflow",
            "-e", f"POSTGRES_PASSWORD={pg_password}", POSTGRES_IMAGE,
            "postgres", "-c", "log_statement=ddl", "-c", "log_line_prefix=client=%h ",
        )  # fmt: skip
        docker(
            "run", "-d", "--name", s3, "--network", sim.network, "--network-alias", "external-s3",
            "--label", f"mlstack.k8s-sim={sim.prefix}", "-e", f"MINIO_ROOT_USER={s3_user}",
            "-e", f"MINIO_ROOT_PASSWORD={s3_password}", S3_IMAGE, "server", "/data",
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while docker(
            "exec", postgres, "pg_isready", "-h", "127.0.0.1", "-U", "mlflow", check=False
        ).returncode:
            assert time.monotonic() < deadline, "the external PostgreSQL never accepted TCP"
            time.sleep(1)
        mark("stores")
        # helm install: the pre-install hooks in order, then the release's workloads.
        migrate, bucket = sim.run_hooks("pre-install")
        mark("hooks")
        (tracking_doc,) = [
            d for d in sim.regular("Deployment") if d["metadata"]["name"].endswith("-tracking")
        ]
        (serving_doc,) = [
            d for d in sim.regular("Deployment") if d["metadata"]["name"].endswith("-serving")
        ]
        tracking = sim.start_workload(tracking_doc)
        sim.wait_ready(tracking)
        mark("tracking ready")
        hpa = [
            d
            for d in sim.regular("HorizontalPodAutoscaler")
            if d["spec"]["scaleTargetRef"]["name"] == serving_doc["metadata"]["name"]
        ]
        serving = sim.start_workload(
            serving_doc, replicas=hpa[0]["spec"]["minReplicas"] if hpa else None
        )
        # Before any model exists serving is live (/health) but not Ready (/ping answers 503).
        sim.wait_ready(serving, probes=("startupProbe",))
        assert not sim.probe_ok(serving[0], serving[0].spec["containers"][0]["readinessProbe"])
        # kubectl create job --from=cronjob/mlstack-linear-model-trainer
        trainer = sim.run_cronjob_now(f"mlstack-{MODEL.replace('_', '-')}-trainer")
        mark("trainer")
        sim.wait_ready(serving, timeout=180, probes=("readinessProbe",))
        mark("serving ready")
        # Memory in use against each pod's limit: what docs/kubernetes.md's requests are sized by.
        stats = docker(
            "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} cpu {{.CPUPerc}}",
            *(p.container for p in [*tracking, *serving]),
        ).stdout  # fmt: skip
        say("resources after training:\n" + stats.replace(f"{sim.prefix}-", ""))
        yield Release(
            sim=sim, postgres=postgres, s3=s3, s3_keys=(s3_user, s3_password),
            secret_values={pg_password, s3_password, s3_user}, migrate=migrate, bucket=bucket,
            tracking=tracking, serving=serving, trainer=trainer,
            tracking_service=tracking_doc["metadata"]["name"], serving_service=serving_doc["metadata"]["name"],
        )  # fmt: skip
    except BaseException:
        say(sim.diagnostics())
        raise
    finally:
        sim.teardown()
        say("timings: " + ", ".join(f"{k} at {v:.0f} s" for k, v in timings.items()))


DDL = re.compile(r"client=(\S+) .*statement: (CREATE|ALTER|DROP)\b", re.I)


def test_the_migration_ran_once_in_its_job_and_the_replicas_did_not_migrate(
    release: Release,
) -> None:
    log = docker("logs", release.postgres, check=False)
    ddl_by_client: dict[str, int] = {}
    for line in (log.stdout + log.stderr).splitlines():
        if match := DDL.search(line):
            host = match.group(1).split("(")[0]
            ddl_by_client[host] = ddl_by_client.get(host, 0) + 1
    # Every schema change came from the migration Job's pod, none from a replica (or anyone else).
    assert set(ddl_by_client) == {release.migrate.ip}, ddl_by_client
    assert ddl_by_client[release.migrate.ip] >= 20, "mlflow db upgrade creates dozens of objects"
    assert "schema up to date" in release.migrate.logs()
    head = release.psql("SELECT version_num FROM alembic_version")
    assert len(head) == 1
    for pod in release.tracking:
        logs = pod.logs()
        assert "no schema upgrade at start (MLSTACK_DB_UPGRADE=false" in logs
        assert "Running upgrade" not in logs
    # The bucket Job made the bucket the server writes into.
    assert "storage: bucket 'mlflow' created" in release.bucket.logs()


def test_both_replicas_answer_api_requests_addressed_to_the_service_name(release: Release) -> None:
    assert len(release.tracking) == 2
    service = release.tracking_service
    for pod in release.tracking:
        url = f"http://{pod.ip}:5000/api/2.0/mlflow/registered-models/search"
        for host in (
            f"{service}:5000",
            f"{service}.mlstack.svc.cluster.local:5000",
            "localhost:5000",
        ):
            answer = requests.get(url, headers={"Host": host}, timeout=30)
            assert answer.status_code == 200, (pod.name, host, answer.text[:300])
            assert MODEL in [m["name"] for m in answer.json()["registered_models"]]
        # The check is on: a name the chart did not list is refused.
        refused = requests.get(url, headers={"Host": "attacker.example:5000"}, timeout=30)
        assert refused.status_code == 403
    # And through the Service name itself, from a pod on the release's network.
    code = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=30).status)\n"
    )
    out = release.client(
        code, f"http://{service}:5000/api/2.0/mlflow/experiments/search?max_results=5"
    )
    assert out.strip() == "200"


def test_the_run_and_the_champion_alias_are_in_postgresql(release: Release) -> None:
    runs = release.psql(
        "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        f"WHERE e.name = '{MODEL}'"
    )
    assert len(runs) == 1 and runs[0][1] == "FINISHED", runs
    aliases = release.psql(
        f"SELECT version FROM registered_model_aliases WHERE name = '{MODEL}' AND alias = 'champion'"
    )
    assert aliases == [["1"]]
    assert "=== training summary ===" in release.trainer.logs()


def test_the_model_is_in_the_bucket_through_the_proxy(release: Release) -> None:
    code = (
        "import boto3, json, sys\n"
        "s3 = boto3.client('s3', endpoint_url='http://external-s3:9000', aws_access_key_id=sys.argv[1],"
        " aws_secret_access_key=sys.argv[2], region_name='us-east-1')\n"
        "print(json.dumps([o['Key'] for o in s3.list_objects_v2(Bucket='mlflow', Prefix='artifacts/')"
        ".get('Contents', [])]))\n"
    )
    keys = json.loads(release.client(code, *release.s3_keys).strip().splitlines()[-1])
    assert any(k.endswith("MLmodel") for k in keys), keys


def test_serving_answers_invocations_with_the_champion_through_its_service_name(
    release: Release,
) -> None:
    from sklearn.datasets import load_diabetes

    rows = load_diabetes(as_frame=True).data.head(3)
    payload = {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}
    code = (
        "import json, sys, urllib.request\n"
        "req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),"
        " headers={'Content-Type': 'application/json'})\n"
        "with urllib.request.urlopen(req, timeout=30) as r:\n"
        "    print(json.dumps({'status': r.status, 'version': r.headers.get('X-Model-Version'),"
        " 'name': r.headers.get('X-Model-Name'), 'body': json.loads(r.read())}))\n"
    )
    url = f"http://{release.serving_service}:5001/invocations"
    answer = json.loads(release.client(code, url, json.dumps(payload)).strip().splitlines()[-1])
    assert answer["status"] == 200
    assert (answer["name"], answer["version"]) == (MODEL, "1")
    predictions = answer["body"]["predictions"]
    assert len(predictions) == 3 and all(isinstance(p, float) for p in predictions)


def test_serving_and_the_trainer_hold_no_store_credentials(release: Release) -> None:
    for pod in [*release.serving, release.trainer]:
        env = docker("inspect", "-f", "{{json .Config.Env}}", pod.container).stdout
        names = {item.split("=", 1)[0] for item in json.loads(env)}
        assert not names & {
            "POSTGRES_USER",
            "POSTGRES_PASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        }, (pod.name, names)
        assert not [value for value in release.secret_values if value in env], (
            f"{pod.name} holds a store credential"
        )
    # The pods that must hold them, do (the check above could not pass by looking at nothing).
    tracking_env = docker(
        "inspect", "-f", "{{json .Config.Env}}", release.tracking[0].container
    ).stdout
    assert all(value in tracking_env for value in release.secret_values)


def test_every_simulated_pod_ran_hardened(release: Release) -> None:
    for pod in release.sim.pods:
        state = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", pod.container).stdout)
        user = docker("inspect", "-f", "{{.Config.User}}", pod.container).stdout.strip()
        assert user == "10001:10001", (pod.name, user)
        assert state["ReadonlyRootfs"] is True
        assert state["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in state["SecurityOpt"]
        mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", pod.container).stdout)
        assert any(m["Destination"] == "/tmp" and m["RW"] for m in mounts), pod.name
        assert state["Memory"] > 0 and state["NanoCpus"] > 0


def test_an_upgrade_reruns_the_hooks_idempotently_while_tracking_serves(release: Release) -> None:
    """`helm upgrade` with the same chart: the pre-upgrade hooks run again against the live
    release; the migration changes nothing (the schema is at head) and the bucket Job finds the
    bucket; the replicas keep answering throughout."""
    before = docker("logs", release.postgres, check=False)
    ddl_before = len(DDL.findall(before.stdout + before.stderr))
    migrate, bucket = release.sim.run_hooks("pre-upgrade")
    assert "schema up to date" in migrate.logs()
    assert "storage: bucket 'mlflow' already exists" in bucket.logs()
    after = docker("logs", release.postgres, check=False)
    assert len(DDL.findall(after.stdout + after.stderr)) == ddl_before, (
        "a no-op upgrade changed the schema"
    )
    for pod in release.tracking:
        url = f"http://{pod.ip}:5000/api/2.0/mlflow/registered-models/search"
        answer = requests.get(url, headers={"Host": f"{release.tracking_service}:5000"}, timeout=30)
        assert answer.status_code == 200


# The bundled PostgreSQL runs as the image's own `postgres` user: uid 999 in the official image,
# 100 in the offline stand-in (Debian's package).
BUNDLED_PG = (
    ["--set", "postgresql.bundled.image.repository=postgres", "--set", "postgresql.bundled.image.tag=17.11-bookworm"]
    if ONLINE
    else [
        "--set", "postgresql.bundled.image.repository=mlstack-offline/postgres", "--set-string", "postgresql.bundled.image.tag=17",
        "--set", "postgresql.bundled.runAsUser=100",
    ]
)  # fmt: skip


def test_trial_with_auth_bundled_postgresql_and_the_migration_of_the_auth_tables(
    release: Release,
) -> None:
    """trial.yaml + auth.yaml: the generated Secrets, the bundled PostgreSQL StatefulSet (hardened:
    non-root, read-only root, no capabilities) and the migration Job, in hook order. The Job
    creates the auth tables too, so replicas starting together do not race on them. (The bundled
    S3 and the bucket Job are left out: the offline S3 stand-in cannot run as a non-root user on a
    read-only root the way pgsty/silo does.)"""
    args = [
        *VALUE_SETS["bundled"],
        "-f",
        f"{EXAMPLES}/auth.yaml",
        "-f",
        "tests/k8s/simulation-values.yaml",
        *BUNDLED_PG,
    ]
    sim = Simulation(render(args), namespace="mlstack")
    try:
        sim.create_network()
        ran = []
        for doc in sim.hooks("pre-install"):
            name = doc["metadata"]["name"]
            if name.endswith("-s3") or name.endswith("-bucket"):
                continue
            if doc["kind"] == "StatefulSet":
                (pod,) = sim.start_workload(doc)
                sim.wait_ready([pod], timeout=180, probes=("readinessProbe",))
                ran.append(pod)
            elif doc["kind"] == "Job":
                ran.append(sim.run_job(doc))
        postgres, migrate = ran
        assert postgres.name == "mlstack-postgresql-0" and migrate.name.startswith(
            "mlstack-migrate-"
        )
        assert "schema up to date" in migrate.logs()
        tables = docker(
            "exec", "-e", "PGPASSWORD", postgres.container, "psql", "-h", "127.0.0.1", "-U", "mlflow",
            "-d", "mlflow", "-Atc",
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            env={"PGPASSWORD": sim.secret_value("mlstack-postgresql", "password")},
        ).stdout.split()  # fmt: skip
        assert {"users", "experiment_permissions", "registered_model_permissions"} <= set(tables)
        assert {"runs", "registered_model_aliases", "alembic_version"} <= set(tables)
        # The generated password is what the server was initialised with (a wrong one is refused).
        wrong = docker(
            "exec", "-e", "PGPASSWORD=not-the-password", postgres.container, "psql", "-h", "127.0.0.1",
            "-U", "mlflow", "-d", "mlflow", "-c", "SELECT 1", check=False,
        )  # fmt: skip
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
        state = json.loads(
            docker("inspect", "-f", "{{json .HostConfig}}", postgres.container).stdout
        )
        assert state["ReadonlyRootfs"] is True and state["CapDrop"] == ["ALL"]
        assert (
            docker("inspect", "-f", "{{.Config.User}}", postgres.container).stdout.strip() != "0:0"
        )
    except BaseException:
        say(sim.diagnostics())
        raise
    finally:
        sim.teardown()
