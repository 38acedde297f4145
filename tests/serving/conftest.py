"""Fixtures for `mlstack serve` tests: registering small models, starting servers, a TCP proxy.

Every server is a real subprocess on a free port, spoken to over HTTP; every registered model name
starts with `srvtest_` plus a per-module tag, so parallel test sessions on one platform don't meet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ALIAS = "champion"
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        return requests.get(url, timeout=timeout).status_code
    except requests.RequestException:
        return 0


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- models ----------------------------------------------------------------------------------
def training_data(kind: str) -> tuple[Any, Any]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    loader = {
        "logreg": load_breast_cancer,
        "logreg_weak": load_breast_cancer,
        "forest": load_wine,
    }.get(kind, load_diabetes)
    return loader(return_X_y=True, as_frame=True)


def train(kind: str, constant: float | None = None) -> Any:
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge

    features, target = training_data(kind)
    estimator = {
        "logreg": lambda: LogisticRegression(max_iter=5000),
        # Heavily regularised: disagrees with "logreg" on a fifth of the first rows (shadow tests).
        "logreg_weak": lambda: LogisticRegression(C=1e-6, max_iter=5000),
        "forest": lambda: RandomForestClassifier(n_estimators=20, random_state=0),
        "ridge": lambda: Ridge(alpha=1.0),
        "constant": lambda: DummyRegressor(strategy="constant", constant=constant),
    }[kind]()
    return estimator.fit(features, target)


@dataclass
class Registry:
    """Registers small scikit-learn models on the platform's registry."""

    tracking_uri: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_experiment("srvtest")

    def name(self, base: str) -> str:
        return f"srvtest_{self.tag}_{base}"

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register(
        self, name: str, kind: str, constant: float | None = None, alias: str | None = ALIAS
    ) -> str:
        """Log, register and (by default) alias a model; returns its version."""
        import mlflow
        from mlflow.models import infer_signature

        features, _ = training_data(kind)
        estimator = train(kind, constant)
        with mlflow.start_run(run_name=name):
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(features, estimator.predict(features)),
                input_example=features.iloc[:3],
                skops_trusted_types=["sklearn.tree._tree.Tree"] if kind == "forest" else None,
            )
        version = str(mlflow.register_model(info.model_uri, name).version)
        if alias:
            self.client.set_registered_model_alias(name, alias, version)
        return version

    def register_broken(self, name: str, alias: str | None = ALIAS) -> str:
        """A version whose artifacts are not a loadable model (an MLmodel file of garbage)."""
        import mlflow

        with mlflow.start_run(run_name=f"{name}-broken") as run:
            mlflow.log_text("flavors: [this is not, a model", "broken/MLmodel")
        source = f"runs:/{run.info.run_id}/broken"
        version = str(self.client.create_model_version(name, source, run.info.run_id).version)
        if alias:
            self.client.set_registered_model_alias(name, alias, version)
        return version


@pytest.fixture(scope="module")
def registry(local_platform: Any) -> Registry:
    return Registry(local_platform.tracking_uri)


# --- servers ----------------------------------------------------------------------------------
@dataclass
class ServerProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its own session: `mlflow models serve` runs uvicorn as a child process.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def post(self, path: str, body: bytes | str, content_type: str = "application/json") -> Any:
        return requests.post(
            self.url + path, data=body, headers={"Content-Type": content_type}, timeout=60
        )


class Servers:
    """Starts servers as real subprocesses; stops all of them at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**env, **TELEMETRY_OFF}
        self.log_dir = log_dir
        self.started: list[ServerProcess] = []

    def _spawn(self, name: str, cmd: list[str], port: int, env: dict[str, str]) -> ServerProcess:
        log_path = self.log_dir / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = ServerProcess(name, port, proc, log_path)
        self.started.append(server)
        return server

    def mlstack(
        self,
        model_uri: str,
        tracking_uri: str | None = None,
        poll_interval: float = 1.0,
        extra_env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wait_health: bool = True,
    ) -> ServerProcess:
        port = free_port()
        env = {**self.env, **(extra_env or {})}
        if tracking_uri:
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        cmd = [
            sys.executable, "-m", "mlstack", "serve", "--model-uri", model_uri,
            "--host", "127.0.0.1", "--port", str(port), "--poll-interval", str(poll_interval),
            *(args or []),
        ]  # fmt: skip
        server = self._spawn("mlstack", cmd, port, env)
        if wait_health and not wait_until(lambda: http_status(f"{server.url}/health") == 200, 60):
            pytest.fail(f"mlstack serve never answered /health:\n{server.log()}")
        return server

    def stock(self, model_uri: str) -> ServerProcess:
        """MLflow's own scoring server: the oracle."""
        port = free_port()
        bin_dir = Path(sys.executable).parent
        env = {**self.env, "PATH": os.pathsep.join([str(bin_dir), *os.get_exec_path()])}
        cmd = [
            str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port),
        ]  # fmt: skip
        server = self._spawn("stock", cmd, port, env)
        if not wait_until(lambda: http_status(f"{server.url}/ping") == 200, 180, 0.5):
            pytest.fail(f"mlflow models serve never became ready:\n{server.log()}")
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture(scope="module")
def servers(local_platform: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    pool = Servers(dict(local_platform.env), tmp_path_factory.mktemp("serving-logs"))
    try:
        yield pool
    finally:
        pool.stop_all()


def wait_ready(server: ServerProcess, timeout: float = 90) -> None:
    if not wait_until(lambda: http_status(f"{server.url}/ping") == 200, timeout):
        pytest.fail(f"{server.url} never became ready:\n{server.log()}")


# --- a TCP proxy that can be cut, to take the registry away from a server ----------------------
class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `close()` refuses and drops every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._open = False
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    made: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()
