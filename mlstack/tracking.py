"""Reaching the tracking server before a run starts: bounded retries, then a clear error."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

# A real API call, not /health: MLflow 3.17 exempts /health from its Host-header check, so a
# healthy server can still refuse every client call with 403 (see README, troubleshooting).
_PROBE = "/api/2.0/mlflow/experiments/search"


class TrackingUnavailable(Exception):
    """The tracking server could not be reached or refused us; exit code 3."""


def check_tracking_server(
    uri: str,
    attempts: int,
    backoff_seconds: float,
    auth: tuple[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Return once `uri` answers an API call; raise TrackingUnavailable after `attempts` tries.

    Only HTTP(S) URIs are probed: a file or database URI is reached by the client directly.
    """
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + _PROBE
    last_error = ""
    for attempt in range(1, attempts + 1):
        try:
            response = requests.get(url, params={"max_results": 1}, timeout=10, auth=auth)
        except requests.RequestException as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if response.ok:
                return
            if response.status_code == 403 and "host" in response.text.lower():
                raise TrackingUnavailable(
                    f"the tracking server at {uri} refused our Host header (HTTP 403): add this "
                    "host name to the server's --allowed-hosts / MLFLOW_SERVER_ALLOWED_HOSTS"
                )
            if response.status_code == 401:
                raise TrackingUnavailable(
                    f"the tracking server at {uri} needs credentials (HTTP 401): set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                )
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
        if attempt < attempts:
            delay = backoff_seconds * 2 ** (attempt - 1)
            log(f"tracking server {uri} not reachable ({last_error}); retry in {delay:g}s")
            time.sleep(delay)
    raise TrackingUnavailable(
        f"cannot reach the MLflow tracking server at {uri} after {attempts} attempts: {last_error}"
    )
