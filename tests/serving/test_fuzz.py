"""Property-based fuzzing of every scoring route: no request body yields a 5xx.

Hypothesis builds request bodies (arbitrary JSON of any shape and depth, the scoring formats with
wrong types inside, huge numbers, NaN and Infinity literals, truncated JSON, bytes that are not
UTF-8) and content types (right, wrong, with odd parameters), and sends them over HTTP to one real
`mlstack serve`. Every answer must be a 2xx, or a 4xx carrying MLflow's error JSON (`error_code`,
`message`); the server must still answer `/ping` afterwards.

Bounded for CI: a fixed number of examples per route (`FUZZ_EXAMPLES`, default 150) and no
Hypothesis deadline (timings on a shared machine are noise); pytest-timeout caps each test.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import (
    ALIAS,
    Registry,
    ServerProcess,
    Servers,
    http_status,
    training_data,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,  # a failure prints the @reproduce_failure line
)

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/json; foo=bar",
    "application/json;",
    "APPLICATION/JSON",
    "text/csv",
    "text/csv; charset=utf-8",
    "application/x-parquet",
    "application/octet-stream",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
    ";;;",
    "application/json; charset=",
)

# --- strategies ---------------------------------------------------------------------------------
huge_ints = st.integers(min_value=-(10**30), max_value=10**30) | st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**400]
)
numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | huge_ints
    | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0])
)
leaves = st.none() | st.booleans() | numbers | st.text(max_size=12)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def deep(depth: int) -> Any:
    value: Any = 1.0
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


def deep_bytes(depth: int, key: str) -> bytes:
    """JSON nested `depth` levels below a scoring key: deeper than Python's json can recurse."""
    return b'{"%s": ' % key.encode() + b'[{"a": ' * depth + b"1" + b"}]" * depth + b"}"


@st.composite
def scoring_payloads(draw: st.DrawFn, columns: list[str]) -> Any:
    """Something close to a scoring request: a known format holding wrong or odd contents."""
    names = draw(
        st.sampled_from([columns, columns[::-1], columns[:-1], [*columns, "bogus"], []])
        | st.lists(st.text(max_size=6) | numbers, max_size=4)
    )
    cell = leaves | json_values
    row = st.lists(cell, min_size=0, max_size=len(columns) + 1)
    rows = st.lists(row, max_size=4)
    record = st.dictionaries(st.sampled_from(names) if names else st.text(), cell, max_size=12)
    key = draw(st.sampled_from(FORMATS))
    inner = draw(
        st.fixed_dictionaries(
            {"columns": st.just(names) | json_values, "data": rows | json_values},
            optional={"index": json_values},
        )
        | st.lists(record, max_size=4)
        | st.dictionaries(st.sampled_from(names) if names else st.text(), st.lists(cell, max_size=3) | cell, max_size=12)
        | rows
        | json_values
        | st.builds(deep, st.integers(min_value=50, max_value=400))
    )  # fmt: skip
    payload: dict[str, Any] = {key: inner}
    if draw(st.booleans()):
        extra = draw(st.sampled_from(["params", "foo", *FORMATS]))
        payload[extra] = draw(json_values)
    return payload


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def bodies(draw: st.DrawFn, columns: list[str]) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["scoring", "json", "truncated", "raw", "deep"]))
    if kind == "scoring":
        body = encode(draw(scoring_payloads(columns)))
    elif kind == "json":
        body = encode(draw(json_values))
    elif kind == "truncated":
        full = encode(draw(scoring_payloads(columns)))
        body = full[: draw(st.integers(min_value=0, max_value=max(0, len(full) - 1)))]
    elif kind == "deep":
        depth = draw(st.integers(min_value=100, max_value=5000))
        body = deep_bytes(depth, draw(st.sampled_from(FORMATS)))
    else:
        body = draw(st.binary(max_size=200))
    content_type = draw(st.sampled_from(CONTENT_TYPES) | st.text(max_size=30))
    if draw(st.booleans()):  # most bodies as JSON, the content type that reaches the most code
        content_type = "application/json"
    return body, content_type


# --- checks ---------------------------------------------------------------------------------------
def assert_client_error_or_success(response: requests.Response, context: str) -> None:
    status = response.status_code
    assert status < 500, f"{context}: {status} {response.text[:500]!r}"
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            pytest.fail(f"{context}: {status} without JSON: {response.text[:300]!r}")
        assert isinstance(body, dict), f"{context}: {body!r}"
        assert isinstance(body.get("error_code"), str), f"{context}: {body!r}"
        assert isinstance(body.get("message"), str), f"{context}: {body!r}"
    else:
        response.json()  # a success is JSON too


def safe_header(value: str) -> str:
    # HTTP header values are latin-1 without control characters; requests refuses others.
    cleaned = "".join(ch for ch in value if 32 <= ord(ch) < 127)
    return cleaned.strip()


@pytest.fixture(scope="module")
def fuzz_server(registry: Registry, servers: Servers) -> tuple[ServerProcess, str]:
    """logreg at /invocations, ridge at /models/<name>/invocations, one server."""
    default = registry.name("fuzz_logreg")
    named = registry.name("fuzz_ridge")
    registry.register(default, "logreg")
    registry.register(named, "ridge")
    server = servers.mlstack(
        f"models:/{default}@{ALIAS}", extra_env={"MLSTACK_MAX_BODY_BYTES": str(256 * 1024)}
    )
    wait_ready(server)
    first = server.post(f"/models/{named}/invocations", b'{"inputs": [[1]]}')
    assert first.status_code < 500, first.text
    return server, named


def fuzz_route(server: ServerProcess, path: str, columns: list[str]) -> Callable[[], None]:
    session = requests.Session()

    @FUZZ
    @given(case=bodies(columns))
    def run(case: tuple[bytes, str]) -> None:
        body, content_type = case
        headers = {"Content-Type": safe_header(content_type)}
        response = session.post(server.url + path, data=body, headers=headers, timeout=60)
        assert_client_error_or_success(response, f"POST {path} {headers} {body[:200]!r}")

    return run


def test_fuzz_default_invocations(fuzz_server: tuple[ServerProcess, str]) -> None:
    server, _ = fuzz_server
    columns = list(training_data("logreg")[0].columns)
    fuzz_route(server, "/invocations", columns)()
    assert http_status(f"{server.url}/ping") == 200, server.log()[-3000:]


def test_fuzz_named_invocations(fuzz_server: tuple[ServerProcess, str]) -> None:
    server, named = fuzz_server
    columns = list(training_data("ridge")[0].columns)
    fuzz_route(server, f"/models/{named}/invocations", columns)()
    assert http_status(f"{server.url}/ping") == 200, server.log()[-3000:]


@pytest.mark.parametrize(
    "raw",
    [
        # A body shorter than its Content-Length, then the client goes away.
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"dataframe_split": {',
        # Chunked, cut in the middle of a chunk.
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n40\r\n{"inputs": [',
        # Not HTTP at all.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    ],
    ids=["short_body", "cut_chunk", "tls_hello"],
)
def test_truncated_requests_leave_the_server_serving(
    fuzz_server: tuple[ServerProcess, str], raw: bytes
) -> None:
    server, _ = fuzz_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    if answer:  # a server may answer 400 to a broken request, or just close: never a 5xx
        status_line = answer.split(b"\r\n", 1)[0]
        assert not status_line.startswith(b"HTTP/1.1 5"), answer[:300]
    assert http_status(f"{server.url}/ping") == 200, server.log()[-3000:]
    features, _ = training_data("logreg")
    ok = server.post(
        "/invocations", encode({"dataframe_split": features.iloc[:2].to_dict(orient="split")})
    )
    assert ok.status_code == 200, ok.text
