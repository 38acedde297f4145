"""Rollouts of a challenger beside the champion, on real servers over HTTP (docs/serving.md#rollouts).

- canary: the weight is honoured within binomial bounds; every answer's prediction is the one of
  the version and alias its headers name; the per-version counters in /metrics match the answers;
- stickiness: one key, one version;
- shadow: the client only ever gets the champion's answers; the agreement rate in /metrics equals
  the one computed from both registered models loaded independently (a planted disagreement);
- guard: trips on a challenger that errors (it refuses the champion's inputs) and on one that
  fails to load, stops its traffic, shows it in /metrics and /rollouts, makes `mlstack promote`
  refuse, and resumes for a new challenger version;
- promote under load: zero non-2xx answers, and the champion then serves the new version.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests

from .conftest import ALIAS, Registry, ServerProcess, Servers, training_data, wait_ready, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHALLENGER = "challenger"


def payload(kind: str, start: int = 0, rows: int = 2) -> bytes:
    features, _ = training_data(kind)
    frame = features.iloc[start : start + rows]
    return json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rollouts(server: ServerProcess, name: str) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/rollouts", timeout=10).json()["models"][name])


def challenger_serving(server: ServerProcess, name: str, version: str) -> bool:
    try:
        challenger = rollouts(server, name)["challenger"]
    except (KeyError, requests.RequestException):
        return False
    return (
        bool(challenger) and challenger["version"] == version and challenger["state"] == "serving"
    )


def rollout_server(servers: Servers, name: str, **env: str) -> ServerProcess:
    extra = {f"MLSTACK_{k.upper()}": v for k, v in env.items()}
    server = servers.mlstack(f"models:/{name}@{ALIAS}", poll_interval=1.0, extra_env=extra)
    wait_ready(server)
    return server


def promote(local_platform: Any, server: ServerProcess, name: str, *args: str) -> Any:
    env = {**local_platform.env, "MLSTACK_SERVING_URL": server.url}
    return subprocess.run(
        [sys.executable, "-m", "mlstack", "promote", name, *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


# --- canary ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(registry: Registry) -> tuple[str, str, str]:
    """A champion answering 1.0 and a challenger answering 2.0."""
    name = registry.name("canary")
    v1 = registry.register(name, "constant", constant=1.0)
    v2 = registry.register(name, "constant", constant=2.0, alias=CHALLENGER)
    return name, v1, v2


def test_canary_weight_is_honoured(servers: Servers, pair: tuple[str, str, str]) -> None:
    name, v1, v2 = pair
    server = rollout_server(servers, name, canary_weight="30")
    assert wait_until(lambda: challenger_serving(server, name, v2), 60), server.log()
    body = payload("constant")
    seen: Counter[tuple[str, str, float]] = Counter()
    with requests.Session() as session:
        for _ in range(600):
            r = session.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            seen[(r.headers["x-model-version"], r.headers["x-model-alias"], r.json()["predictions"][0])] += 1  # fmt: skip
    # Only the two consistent combinations: never a header naming one version and the other's answer.
    assert set(seen) <= {(v1, ALIAS, 1.0), (v2, CHALLENGER, 2.0)}, seen
    to_challenger = seen[(v2, CHALLENGER, 2.0)]
    # Binomial(600, 0.3): mean 180, sd 11.2; the bounds are 5 sd away (false alarm ~1e-6).
    assert 124 <= to_challenger <= 236, seen
    live = {"model": name, "mode": "live", "code": "200"}
    assert metric(server, "mlstack_serving_model_requests_total", version=v2, alias=CHALLENGER, **live) == to_challenger  # fmt: skip
    assert metric(server, "mlstack_serving_model_requests_total", version=v1, alias=ALIAS, **live) == 600 - to_challenger  # fmt: skip
    assert metric(server, "mlstack_serving_model_request_duration_seconds_count", version=v2, alias=CHALLENGER, mode="live") == to_challenger  # fmt: skip
    assert metric(server, "mlstack_serving_challenger_version", model=name) == float(v2)


def test_sticky_header_pins_each_key_to_one_version(
    servers: Servers, pair: tuple[str, str, str]
) -> None:
    name, _, v2 = pair
    server = rollout_server(servers, name, canary_weight="30", canary_sticky_header="X-User-Id")
    assert wait_until(lambda: challenger_serving(server, name, v2), 60), server.log()
    body = payload("constant")
    versions: dict[str, set[str]] = {}
    with requests.Session() as session:
        for _ in range(4):
            for user in range(80):
                headers = {"Content-Type": "application/json", "X-User-Id": f"user-{user}"}
                r = session.post(
                    f"{server.url}/invocations", data=body, headers=headers, timeout=30
                )
                assert r.status_code == 200, r.text
                versions.setdefault(f"user-{user}", set()).add(r.headers["x-model-version"])
    assert all(len(v) == 1 for v in versions.values()), versions
    on_challenger = sum(1 for v in versions.values() if v == {v2})
    # Keys hash uniformly: Binomial(80, 0.3), mean 24, sd 4.1; 5 sd bounds.
    assert 4 <= on_challenger <= 44, on_challenger


# --- shadow ----------------------------------------------------------------------------------------
def test_shadow_never_changes_answers_and_measures_agreement(
    registry: Registry, servers: Servers
) -> None:
    import mlflow.pyfunc

    name = registry.name("shadow")
    v1 = registry.register(name, "logreg")
    v2 = registry.register(name, "logreg_weak", alias=CHALLENGER)
    server = rollout_server(servers, name, shadow_percent="100")
    assert wait_until(lambda: challenger_serving(server, name, v2), 60), server.log()

    # The truth, from the registry through an independent client: both models' predictions.
    features, _ = training_data("logreg")
    rows = features.iloc[:60]
    champion = mlflow.pyfunc.load_model(f"models:/{name}/{v1}").predict(rows).tolist()
    challenger = mlflow.pyfunc.load_model(f"models:/{name}/{v2}").predict(rows).tolist()
    planted = sum(1 for a, b in zip(champion, challenger, strict=True) if a != b)
    assert 0 < planted < 60  # a real, partial disagreement

    with requests.Session() as session:
        for start in range(0, 60, 3):  # 20 requests of 3 rows
            r = session.post(f"{server.url}/invocations", data=payload("logreg", start, 3), headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == v1 and r.headers["x-model-alias"] == ALIAS
            assert r.json()["predictions"] == champion[start : start + 3]

    def compared() -> float:
        return metric(server, "mlstack_serving_shadow_predictions_total", model=name, version=v2)

    assert wait_until(lambda: compared() == 60, 30), compared()
    agree = metric(server, "mlstack_serving_shadow_predictions_total", model=name, version=v2, outcome="agree")  # fmt: skip
    disagree = metric(server, "mlstack_serving_shadow_predictions_total", model=name, version=v2, outcome="disagree")  # fmt: skip
    assert (agree, disagree) == (60 - planted, planted)
    shadow = rollouts(server, name)["challenger"]["shadow"]
    assert shadow["compared"] == 60
    assert shadow["agreement_rate"] == pytest.approx((60 - planted) / 60)
    assert metric(server, "mlstack_serving_model_requests_total", model=name, version=v2, mode="shadow", code="200") == 20  # fmt: skip
    assert metric(server, "mlstack_serving_model_requests_total", model=name, version=v2, mode="live") == 0  # fmt: skip


# --- guard -----------------------------------------------------------------------------------------
GUARD_ENV = {"canary_weight": "50", "guard_min_requests": "10", "guard_max_error_ratio": "0.2"}


def test_guard_trips_on_a_challenger_that_errors_then_resumes_for_a_new_version(
    registry: Registry, servers: Servers, local_platform: Any
) -> None:
    name = registry.name("guard")
    v1 = registry.register(name, "ridge")
    # A challenger trained on other columns: it refuses every request the champion answers.
    bad = registry.register(name, "logreg", alias=CHALLENGER)
    server = rollout_server(servers, name, **GUARD_ENV)
    assert wait_until(lambda: challenger_serving(server, name, bad), 60), server.log()
    body = payload("ridge")
    statuses: Counter[tuple[int, str]] = Counter()

    def tripped() -> bool:
        return bool(rollouts(server, name)["challenger"]["guard"]["tripped"])

    with requests.Session() as session:
        for _ in range(200):
            r = session.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
            statuses[(r.status_code, r.headers.get("x-model-alias", ""))] += 1
            if tripped():
                break
    assert wait_until(tripped, 30), (statuses, rollouts(server, name))
    guard = rollouts(server, name)["challenger"]["guard"]
    assert "error ratio" in guard["reason"] and guard["version"] == bad
    assert statuses[(400, CHALLENGER)] > 0 and statuses[(200, ALIAS)] > 0
    assert metric(server, "mlstack_serving_guard_tripped", model=name, version=bad) == 1.0
    assert metric(server, "mlstack_serving_guard_trips_total", model=name) == 1.0
    assert "guard of " + name + " tripped" in server.log()
    # Tripped: every request goes to the champion.
    with requests.Session() as session:
        for _ in range(40):
            r = session.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
            assert (r.status_code, r.headers["x-model-version"], r.headers["x-model-alias"]) == (200, v1, ALIAS)  # fmt: skip
    # The registry is untouched, and promote refuses (then --force would be the user's call).
    client = registry.client
    assert client.get_model_version_by_alias(name, ALIAS).version == v1
    refused = promote(local_platform, server, name)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "guard tripped" in refused.stderr and "error ratio" in refused.stderr
    assert client.get_model_version_by_alias(name, ALIAS).version == v1
    assert client.get_model_version_by_alias(name, CHALLENGER).version == bad

    # A new challenger version: the guard clears and the canary resumes.
    good = registry.register(name, "ridge", alias=CHALLENGER)
    assert wait_until(lambda: challenger_serving(server, name, good), 60), server.log()
    assert rollouts(server, name)["challenger"]["guard"]["tripped"] is False
    aliases: Counter[str] = Counter()
    with requests.Session() as session:
        for _ in range(60):
            r = session.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            aliases[r.headers["x-model-alias"]] += 1
    assert aliases[CHALLENGER] > 0 and aliases[ALIAS] > 0, aliases
    assert metric(server, "mlstack_serving_guard_tripped", model=name, version=good) == 0.0


def test_guard_trips_on_a_challenger_that_fails_to_load(
    registry: Registry, servers: Servers, local_platform: Any
) -> None:
    name = registry.name("guardload")
    v1 = registry.register(name, "constant", constant=5.0)
    broken = registry.register_broken(name, alias=CHALLENGER)
    server = rollout_server(servers, name, **GUARD_ENV)

    def failed() -> bool:
        challenger = rollouts(server, name)["challenger"]
        return bool(challenger and challenger["guard"]["tripped"])

    assert wait_until(failed, 90), (rollouts(server, name), server.log())
    challenger = rollouts(server, name)["challenger"]
    assert challenger["version"] == broken and challenger["state"] == "failed"
    assert "loading" in challenger["guard"]["reason"]
    assert metric(server, "mlstack_serving_guard_tripped", model=name, version=broken) == 1.0
    with requests.Session() as session:
        for _ in range(30):
            r = session.post(f"{server.url}/invocations", data=payload("constant"), headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
            assert (r.status_code, r.headers["x-model-version"], r.json()["predictions"][0]) == (200, v1, 5.0)  # fmt: skip
    refused = promote(local_platform, server, name)
    assert refused.returncode == 1 and "guard tripped" in refused.stderr, refused.stderr


# --- promote -----------------------------------------------------------------------------------------
def test_promote_under_load_has_zero_non_2xx_answers(
    registry: Registry, servers: Servers, local_platform: Any
) -> None:
    name = registry.name("promote")
    v1 = registry.register(name, "constant", constant=1.0)
    v2 = registry.register(name, "constant", constant=2.0, alias=CHALLENGER)
    server = rollout_server(servers, name, canary_weight="20")
    assert wait_until(lambda: challenger_serving(server, name, v2), 60), server.log()

    expected = {v1: 1.0, v2: 2.0}
    body = payload("constant")
    stop = threading.Event()
    lock = threading.Lock()
    seen: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
                except requests.RequestException as exc:
                    with lock:
                        problems.append(f"transport: {exc}")
                    continue
                version, alias = (
                    r.headers.get("x-model-version", ""),
                    r.headers.get("x-model-alias", ""),
                )
                with lock:
                    seen[(version, alias)] += 1
                    if r.status_code != 200:
                        problems.append(f"{r.status_code}: {r.text[:200]}")
                    elif r.json()["predictions"] != [expected.get(version)] * 2:
                        problems.append(f"version {version} answered {r.text[:100]}")

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        result = promote(local_platform, server, name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{name}: @{ALIAS} {v1} -> {v2}" in result.stdout
        assert f"@{CHALLENGER} removed (was {v2})" in result.stdout

        def only_new_champion() -> bool:
            with lock:
                seen.clear()
            time.sleep(1.0)
            with lock:
                return set(seen) == {(v2, ALIAS)}

        assert wait_until(only_new_champion, 45, 0.1), dict(seen)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not problems, problems[:10]
    client_ = registry.client
    assert client_.get_model_version_by_alias(name, ALIAS).version == v2
    assert CHALLENGER not in client_.get_registered_model(name).aliases
    assert rollouts(server, name)["challenger"] is None
    assert "(the challenger, promoted)" in server.log()  # no second download, no gap
