"""The tracking server's app (`mlflow server --app-name mlstack`, docker/mlflow-server.sh).

MLflow's own app, or its basic-auth app with `MLSTACK_AUTH=basic`, plus one thing MLflow lacks:
requests counted and timed **per endpoint**. MLflow's exporter (`--expose-prometheus`,
prometheus_flask_exporter) labels its request metrics by method, status and MLflow version only, so
a dashboard cannot tell a slow `runs/search` from a slow `log-batch`. With `--expose-prometheus` on,
this adds

    mlstack_tracking_http_request_duration_seconds{method, route, status}   (a histogram)

where `route` is the Flask URL rule that matched (`/api/2.0/mlflow/runs/get`,
`/api/2.0/mlflow/registered-models/alias`): a template, never the raw path, so run
ids and artifact paths cannot grow the label set. Requests no rule matched (404, 405) share
`route="unmatched"`; methods outside the HTTP verbs share `method="other"`. It is written to the
same multiprocess directory as MLflow's own metrics, so the one `/metrics` answer (all workers)
carries both. Flask's hooks count what Flask handles (all MLflow's exporter sees); MLflow 3.17's
native FastAPI routes (the artifact proxy's downloads and uploads, `GET`/`PUT
/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}`, the OTLP and gateway routes) never reach
Flask, and an ASGI middleware (`NativeRouteMetrics`) counts those under their path template
(basic auth's 401 on them included).

Artifact downloads through the proxy stream from S3 (`stream_artifact_downloads`): MLflow 3.17's own
download route copies the whole object to a temporary directory before its first byte. Ours is
placed ahead of it under the same path template, inside MLflow's middlewares (basic auth checks
it as it checks MLflow's), and hands anything that is not one S3 object back to MLflow's route.

The runs table: `POST runs/search` is answered from SQL and written as compact JSON
(mlstack/runs_search.py) when the request is one it can answer exactly as MLflow does (metric
filters, metric and start-time orders); MLflow's handler answers the rest. It is the Flask view of
MLflow's endpoint, replaced by one that falls back to it, so basic auth's checks and the
per-endpoint metrics see it as they see MLflow's. `MLSTACK_RUNS_SEARCH=mlflow` (docker.env, the
chart's `tracking.extraEnv`, or the environment of `mlstack local up`) leaves every request to
MLflow's handler.

Run writes: `POST runs/create`, `runs/log-batch` and `runs/update` are parsed and checked by
MLflow's handlers as always, then written in one transaction of a few SQL statements each
(mlstack/run_writes.py, under MLflow's store methods) where that stores exactly the rows MLflow's
store would; MLflow's store writes the rest. `MLSTACK_RUN_WRITES=mlflow` leaves every write to
MLflow's store.

MLflow loads the app through its `mlflow.app` entry point (pyproject.toml), the same mechanism as
its own `basic-auth`; nothing of MLflow is patched or copied.

With basic auth, `mlflow server --app-name basic-auth` would create the admin account once, in the
CLI process, before the workers start; with this app name it does not, so `bootstrap_auth` does it
(docker/mlflow-server.sh runs it before `mlflow server`), together with the monitoring login below.

The monitoring login: Prometheus scrapes `/metrics` with HTTP basic auth as `MONITORING_USER`,
whose password is the generated scrape token of the monitoring overlay
(docker-compose.monitoring.yml, `MLSTACK_MONITORING_TOKEN_FILE`). `bootstrap_auth` creates that
user, never an admin, and sets its password to the file's content at every start, so the two
cannot drift apart. MLflow's basic auth refuses /metrics to non-admins (fail-closed: no validator
for it), so `allow_the_scrape_login` answers /metrics for that one user, and only /metrics. MLflow's plain app ignores the Authorization header, so one scrape
configuration serves both modes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask, Response

MONITORING_USER = "mlstack-monitoring"
ROUTE_METRIC = "mlstack_tracking_http_request_duration_seconds"
# prometheus_flask_exporter's default buckets: MLflow's own histogram and this one line up.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
# Probes and the scrape itself, as MLflow's exporter leaves out /health and /version.
EXCLUDED_PATHS = frozenset(("/health", "/version", "/metrics"))
# `mlflow server --expose-prometheus DIR` hands DIR to the workers in this variable
# (mlflow.server.constants.PROMETHEUS_EXPORTER_ENV_VAR); prometheus_client reads it too.
MULTIPROC_ENV = "prometheus_multiproc_dir"
_STARTED = "mlstack.started"

_histogram: Any = None  # one per process: prometheus_client refuses a second of the same name
_installed: set[int] = set()


def route_histogram() -> Any:
    global _histogram
    if _histogram is None:
        from prometheus_client import Histogram

        _histogram = Histogram(
            ROUTE_METRIC,
            "Tracking server HTTP requests by endpoint (Flask URL rule): duration in seconds",
            ("method", "route", "status"),
            buckets=BUCKETS,
        )
    return _histogram


def install_route_metrics(app: Flask) -> None:
    """Count and time every request of `app` by method, URL rule and status (once per app)."""
    if id(app) in _installed:
        return
    from flask import request

    histogram = route_histogram()

    def start() -> None:
        request.environ[_STARTED] = time.perf_counter()

    def observe(response: Response) -> Response:
        started = request.environ.get(_STARTED)
        if started is not None and request.path not in EXCLUDED_PATHS:
            rule = request.url_rule
            histogram.labels(
                request.method if request.method in METHODS else "other",
                rule.rule if rule is not None else "unmatched",
                str(response.status_code),
            ).observe(time.perf_counter() - started)
        return response

    # First of all before-request hooks: the basic-auth app's check (a 401) and MLflow's own hooks
    # may answer early; the after-request hook still sees that answer.
    app.before_request_funcs.setdefault(None, []).insert(0, start)
    app.after_request(observe)
    _installed.add(id(app))


class NativeRouteMetrics:
    """ASGI middleware, outermost on MLflow's FastAPI app: the same histogram for the requests
    Flask never sees. Each request is matched against the app's routes as Starlette's router
    matches it: a `Route` (MLflow's native FastAPI routes, e.g. the artifact proxy's downloads and
    uploads) is labelled with its path template, whoever answers (the route, or basic auth's
    middleware with a 401); the `Mount` of the Flask app is left to Flask's hooks, so no request is
    counted twice."""

    def __init__(self, app: Any, routes: list[Any]) -> None:
        from starlette.routing import Match, Route  # once here, not on every request

        self.app = app
        self.routes = routes
        self.histogram = route_histogram()
        self._full, self._partial, self._route_type = Match.FULL, Match.PARTIAL, Route

    def _native_route(self, scope: dict[str, Any]) -> str | None:
        Route = self._route_type
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is self._full:
                return route.path if isinstance(route, Route) else None
            if match is self._partial and partial is None:
                partial = route  # the path matches, the method does not (405)
        if partial is not None:
            return partial.path if isinstance(partial, Route) else None
        return "unmatched"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in EXCLUDED_PATHS:
            await self.app(scope, receive, send)
            return
        route = self._native_route(scope)
        if route is None:  # Flask's
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"]
            self.histogram.labels(
                method if method in METHODS else "other", route, str(status)
            ).observe(time.perf_counter() - started)


# MLflow's native download route (mlflow/server/artifact_router.py), both prefixes.
DOWNLOAD_ROUTES = (
    "/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}",
)


async def download_artifact(artifact_path: str) -> Any:
    """GET of one proxied artifact, streamed from S3 with its Content-Length, with MLflow's
    headers. A folder gets a 400, a missing file a 404. Whatever else is not an object of our S3
    repository (artifact serving off, a bad or workspace-less path, another store) gets MLflow's
    own answer."""
    import asyncio

    from fastapi import HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse
    from mlflow.server import artifact_router as mlflow_route
    from mlflow.utils.mime_type_utils import _guess_mime_type
    from mlflow.utils.uri import validate_path_is_safe

    from mlstack.artifacts import ProxiedS3ArtifactRepository

    if not mlflow_route._is_serving_proxied_artifacts():
        return await mlflow_route.download_artifact(artifact_path)
    try:
        path = mlflow_route._get_workspace_scoped_path(validate_path_is_safe(artifact_path))
        repository = mlflow_route._get_artifact_repo()
    except Exception:  # MLflow's route answers these as it does
        return await mlflow_route.download_artifact(artifact_path)
    if not isinstance(repository, ProxiedS3ArtifactRepository) or not path:
        return await mlflow_route.download_artifact(artifact_path)
    opened = await asyncio.to_thread(repository.open_download, path)
    if opened is None:
        if await asyncio.to_thread(repository.is_folder, path):
            # MLflow's route would copy the whole folder to a temporary directory and then fail
            # to open it, after its 200 (an empty body); its answer for a local store's folder:
            raise HTTPException(
                status_code=400,
                detail=f"Artifact path refers to a directory, not a file: '{artifact_path}'",
            )
        # MLflow's route answers a missing file with a 500, which clients retry for minutes.
        return JSONResponse(
            status_code=404,
            content={
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": f"No artifact at '{artifact_path}'",
            },
        )
    size, chunks = opened
    filename = path.rsplit("/", 1)[-1]
    headers = {
        "Content-Type": _guess_mime_type(filename),
        "Content-Disposition": mlflow_route._content_disposition(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Length": str(size),
    }
    return StreamingResponse(chunks, headers=headers)


def stream_artifact_downloads(app: Any) -> None:
    """Put `download_artifact` ahead of MLflow's download route, under the same templates."""
    from fastapi.routing import APIRoute

    routes = [APIRoute(path, download_artifact, methods=["GET"]) for path in DOWNLOAD_ROUTES]
    app.router.routes[:0] = routes


def allow_the_scrape_login(app: Flask) -> None:
    """Let MONITORING_USER, with its password, read `GET /metrics`, and nothing else.

    MLflow 3.17's basic auth is fail-closed (MLFLOW_BASIC_AUTH_FAIL_CLOSED, on by default): a
    route without a permission validator, such as the exporter's /metrics, is refused (403) to
    every user but admins. Rather than make the scrape login an admin, this hook, placed before
    the basic-auth app's own, answers /metrics for that one user after checking its password in
    MLflow's user store; any other request, or another login, goes on to MLflow's checks
    unchanged (so a wrong password still gets MLflow's 401)."""
    from flask import request
    from mlflow.server.auth import store

    def scrape() -> Any:
        if request.path != "/metrics" or request.method != "GET":
            return None
        login = request.authorization
        if login is None or login.type != "basic" or login.username != MONITORING_USER:
            return None
        rule = request.url_rule  # the exporter's /metrics rule (routing ran before this hook)
        if rule is None or not store.authenticate_user(MONITORING_USER, login.password or ""):
            return None
        return app.view_functions[rule.endpoint](**(request.view_args or {}))

    app.before_request_funcs.setdefault(None, []).insert(0, scrape)


def sql_route_enabled(name: str, value: str | None) -> bool:
    """A switch for one of mlstack's own routes: `sql` (the default) or `mlflow` (MLflow's code
    for every request); anything else is refused, as docker/mlflow-server.sh refuses it."""
    mode = value or "sql"
    if mode not in ("sql", "mlflow"):
        raise ValueError(f"{name} must be sql or mlflow, not {value!r}")
    return mode == "sql"


def runs_search_enabled(value: str | None) -> bool:
    """MLSTACK_RUNS_SEARCH: `sql` answers runs/search from SQL where it can
    (mlstack/runs_search.py); `mlflow` leaves every request to MLflow's handler."""
    return sql_route_enabled("MLSTACK_RUNS_SEARCH", value)


def create_app() -> Any:
    """The app each server worker runs (a factory: `mlflow server` passes uvicorn `--factory`)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as flask_app

    from mlstack import run_writes, runs_search

    if runs_search_enabled(os.environ.get("MLSTACK_RUNS_SEARCH")):
        runs_search.install(flask_app)
    if run_writes.enabled(os.environ.get("MLSTACK_RUN_WRITES")):
        run_writes.install(flask_app)
    metrics = bool(os.environ.get(MULTIPROC_ENV))
    if metrics:
        install_route_metrics(flask_app)
    mode = os.environ.get("MLSTACK_AUTH", "none")
    if mode == "basic":
        from mlflow.server.auth import create_app as basic_auth_app

        app = basic_auth_app(flask_app)
        if metrics:
            allow_the_scrape_login(flask_app)
    elif mode != "none":
        raise ValueError(f"MLSTACK_AUTH must be none or basic, not {mode!r}")
    elif _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import app
    else:
        app = flask_app
    if app is not flask_app:
        stream_artifact_downloads(app)
    if metrics and app is not flask_app:
        # Added last: outermost, so it also times the answers of MLflow's own middlewares.
        app.add_middleware(NativeRouteMetrics, routes=app.router.routes)
    return app


def read_monitoring_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(
            f"mlstack tracking app: cannot read the monitoring token {path}: {exc}"
        ) from exc
    if len(token) < 16 or any(c.isspace() for c in token):
        raise SystemExit(
            f"mlstack tracking app: the monitoring token in {path} must be one word of at least "
            "16 characters"
        )
    return token


def ensure_monitoring_user(store: Any, password: str) -> str:
    """Create MONITORING_USER (not an admin) or bring its password and role back; say what."""
    if not store.has_user(MONITORING_USER, use_primary=True):
        store.create_user(MONITORING_USER, password, is_admin=False)
        return "created"
    if store.get_user(MONITORING_USER).is_admin:
        store.update_user(MONITORING_USER, password=password, is_admin=False)
        return "demoted to a non-admin, password set"
    if not store.authenticate_user(MONITORING_USER, password, use_primary=True):
        store.update_user(MONITORING_USER, password=password)
        return "password set"
    return "unchanged"


def bootstrap_auth() -> None:
    """Before the workers start (basic auth): what `mlflow server --app-name basic-auth` does in
    its own process (check the secret key, migrate the auth tables, create the admin), then the
    monitoring login when the monitoring overlay provides its token."""
    from mlflow.server.auth import (
        auth_config,
        bootstrap_admin_user,
        get_flask_server_secret_key,
        store,
    )

    get_flask_server_secret_key()
    bootstrap_admin_user()
    token_file = os.environ.get("MLSTACK_MONITORING_TOKEN_FILE")
    if not token_file:
        return
    if auth_config.admin_username == MONITORING_USER:
        raise SystemExit(
            f"mlstack tracking app: MLFLOW_AUTH_ADMIN_USERNAME may not be {MONITORING_USER}, "
            "the monitoring login's name"
        )
    done = ensure_monitoring_user(store, read_monitoring_token(Path(token_file)))
    print(f"mlstack tracking app: monitoring user {MONITORING_USER}: {done}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:] != ["bootstrap-auth"]:
        raise SystemExit("usage: python -m mlstack.tracking_app bootstrap-auth")
    bootstrap_auth()
