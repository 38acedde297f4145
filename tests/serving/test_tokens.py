"""Bearer-token authentication of `mlstack serve` (MLSTACK_SERVE_TOKENS_FILE).

A real server with a tokens file, spoken to over HTTP: no token and a wrong token get 401 with
MLflow's error JSON, the right token (either of two) gets predictions; the probes stay open;
/metrics and the informational routes are checked like scoring. A scrape-only token
(MLSTACK_SERVE_METRICS_TOKENS_FILE, the monitoring overlay's) opens /metrics and nothing else. A
bad tokens file stops the server before it listens, with exit code 2 and a message naming the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mlstack.serving.auth import BearerAuth, TokenFileError, read_tokens

from .conftest import ALIAS, Registry, ServerProcess, Servers, training_data, wait_ready

TOKEN_A = "tok-a-0123456789abcdef0123456789"
TOKEN_B = "tok-b-fedcba9876543210fedcba9876"
TOKEN_SCRAPE = "0f" * 32  # the shape monitoring-init generates


def body() -> bytes:
    features, _ = training_data("constant")
    return json.dumps({"dataframe_split": features.iloc[:2].to_dict(orient="split")}).encode()


# --- unit: the token file and the comparison ---------------------------------------------------
@pytest.mark.unit
def test_read_tokens_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# team a\n{TOKEN_A}\n\n  {TOKEN_B}  \n")
    assert read_tokens(path) == [TOKEN_A, TOKEN_B]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("# only a comment\n\n", "holds no token"),
        ("short\n", "at least 16 characters"),
        ("two words in one token line\n", "without spaces"),
    ],
)
def test_bad_tokens_files_are_refused(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokenFileError, match=message):
        read_tokens(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (f"Bearer {TOKEN_A}".encode(), True),
        (f"bearer {TOKEN_B}".encode(), True),
        (f"Bearer  {TOKEN_A} ".encode(), True),
        (f"Bearer {TOKEN_A}x".encode(), False),
        (f"Bearer {TOKEN_A[:-1]}".encode(), False),
        (TOKEN_A.encode(), False),
        (f"Basic {TOKEN_A}".encode(), False),
        (b"Bearer ", False),
        (b"", False),
        (None, False),
    ],
)
def test_bearer_auth_allows_exactly_the_tokens(header: bytes | None, allowed: bool) -> None:
    assert BearerAuth([TOKEN_A, TOKEN_B]).allows(header) is allowed


# --- integration: a real server ------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(
    registry: Registry, servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    name = registry.name("tokens")
    registry.register(name, "constant", constant=4.0)
    tokens = tmp_path_factory.mktemp("tokens") / "serving-tokens"
    tokens.write_text(f"# serving clients\n{TOKEN_A}\n{TOKEN_B}\n")
    scrape = tokens.parent / "scrape-token"
    scrape.write_text(TOKEN_SCRAPE)  # no newline, as monitoring-init writes it
    server = servers.mlstack(
        f"models:/{name}@{ALIAS}",
        extra_env={
            "MLSTACK_SERVE_TOKENS_FILE": str(tokens),
            "MLSTACK_SERVE_METRICS_TOKENS_FILE": str(scrape),
        },
    )
    wait_ready(server)  # /ping is open: readiness probes need no token
    return server


def call(server: ServerProcess, method: str, path: str, token: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body() if method == "POST" else None
    return requests.request(method, server.url + path, data=data, headers=headers, timeout=30)


def assert_401(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert "bearer token" in response.json()["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/invocations"),
        ("GET", "/metrics"),
        ("GET", "/version"),
        ("GET", "/models"),
        ("POST", "/models/anything/invocations"),
        ("GET", "/no/such/route"),
    ],
)
def test_checked_routes_need_a_valid_token(guarded: ServerProcess, method: str, path: str) -> None:
    assert_401(call(guarded, method, path, None))
    assert_401(call(guarded, method, path, "not-a-valid-token-at-all"))
    assert_401(call(guarded, method, path, TOKEN_A + "x"))
    assert call(guarded, method, path, TOKEN_A).status_code != 401


@pytest.mark.integration
def test_right_tokens_get_predictions(guarded: ServerProcess) -> None:
    for token in (TOKEN_A, TOKEN_B):
        answer = call(guarded, "POST", "/invocations", token)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [4.0, 4.0]}
        assert answer.headers["x-model-version"]
    metrics = call(guarded, "GET", "/metrics", TOKEN_B)
    assert metrics.status_code == 200
    assert 'route="unauthenticated"' in metrics.text  # the refusals are counted


@pytest.mark.integration
def test_the_scrape_token_opens_metrics_only(guarded: ServerProcess) -> None:
    answer = call(guarded, "GET", "/metrics", TOKEN_SCRAPE)
    assert answer.status_code == 200, answer.text
    assert "mlstack_serving_requests_total" in answer.text
    for method, path in (("POST", "/invocations"), ("POST", "/models/anything/invocations"),
                         ("GET", "/version"), ("GET", "/models"), ("GET", "/rollouts")):  # fmt: skip
        assert_401(call(guarded, method, path, TOKEN_SCRAPE))


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/health", "/ping"])
def test_probes_stay_open(guarded: ServerProcess, path: str) -> None:
    assert call(guarded, "GET", path, None).status_code == 200
    assert call(guarded, "GET", path, "wrong-token-wrong-token").status_code == 200


@pytest.mark.integration
def test_a_bad_tokens_file_stops_the_server_with_exit_2(
    local_platform: object, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("short\n")
    for path in (tokens, tmp_path / "missing"):
        result = subprocess.run(
            [sys.executable, "-m", "mlstack", "serve", "--port", "0"],
            env={**local_platform.env, "MLSTACK_SERVE_TOKENS_FILE": str(path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert str(path) in result.stderr
