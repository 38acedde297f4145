"""Reaching the tracking server: before a run starts (bounded retries, then a clear error), while
it runs (MLflow's client retries, bounded by a window), and after it failed (mark it FAILED)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import requests

# A real API call, not /health: MLflow 3.17 exempts /health from its Host-header check, so a
# healthy server can still refuse every client call with 403 (see docs/troubleshooting.md).
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


# --- while a run is in progress: MLflow's own client retries -----------------------------------

# MLflow retries every request (connection errors, 408/429/5xx, any method) through urllib3:
# no sleep before the first retry, then factor * 2**(n-1) seconds, each capped at 120 s; MLflow
# refuses more than 10 retries. Its defaults (7 retries, factor 2) wait about 4 minutes.
MLFLOW_MAX_RETRIES_LIMIT = 10
URLLIB3_BACKOFF_MAX_SECONDS = 120.0
RETRY_BACKOFF_FACTOR = 1  # the finest schedule MLflow accepts (an integer): 0, 2, 4, 8, ... s


def retry_sleeps(retries: int, factor: int = RETRY_BACKOFF_FACTOR) -> list[float]:
    """The sleeps before each of `retries` retries of one MLflow request (jitter aside)."""
    return [
        0.0 if n == 1 else min(URLLIB3_BACKOFF_MAX_SECONDS, float(factor * 2 ** (n - 1)))
        for n in range(1, retries + 1)
    ]


def retries_for_window(window_seconds: float, factor: int = RETRY_BACKOFF_FACTOR) -> int:
    """The fewest retries whose sleeps add up to `window_seconds` (at most MLflow's limit).

    The window is rounded up to the exponential schedule: 60 s gives 6 retries (62 s in all),
    120 s gives 7 (126 s).
    """
    for retries in range(MLFLOW_MAX_RETRIES_LIMIT + 1):
        if sum(retry_sleeps(retries, factor)) >= window_seconds:
            return retries
    return MLFLOW_MAX_RETRIES_LIMIT


def configure_client_retries(
    window_seconds: float, environ: MutableMapping[str, str] | None = None
) -> tuple[int, int]:
    """Bound MLflow's per-request retries by `window_seconds` (MLflow reads its variables on
    every request). Variables the user set themselves are kept. Returns (retries, factor)."""
    env = os.environ if environ is None else environ
    env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries_for_window(window_seconds)))
    env.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(RETRY_BACKOFF_FACTOR))
    return int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(
        env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    )


def stop_client_retries(environ: MutableMapping[str, str] | None = None) -> None:
    """No more MLflow retries in this process: a run failed, and mark_runs_failed bounds the rest."""
    env = os.environ if environ is None else environ
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


def retry_cut_off_answers() -> None:
    """Give a request whose answer is cut off after its headers the retries MLflow gives one whose
    answer never starts. Call once in a process, before its first MLflow request.

    urllib3 retries a request whose connection fails or whose status line never comes (any method:
    MLflow's Retry allows them all), but requests reads the body only after urllib3 has returned,
    so a server killed between the headers and the body (seen in CI: `log-batch`'s 2-byte `{}`
    never came) raises ChunkedEncodingError at once, and the run fails inside a retry window that
    was meant to cover a restart. Re-sending has the effect MLflow already accepts for a lost
    status line. A file being uploaded is rewound first, so a retried PUT sends the whole file.
    Each retry runs MLflow's own schedule again; MLFLOW_HTTP_REQUEST_MAX_RETRIES bounds how many.
    """
    from mlflow.utils import rest_utils

    send = rest_utils._get_http_response_with_retries
    if getattr(send, "retries_cut_off_answers", False):
        return

    def send_again_if_cut_off(
        method: str, url: str, max_retries: int, backoff_factor: float, *args: Any, **kwargs: Any
    ) -> requests.Response:
        body = kwargs.get("data")
        start = body.tell() if hasattr(body, "seek") and hasattr(body, "tell") else None
        for attempt in range(1, max_retries + 2):
            try:
                return send(method, url, max_retries, backoff_factor, *args, **kwargs)
            except requests.exceptions.ChunkedEncodingError:
                if attempt > max_retries:
                    raise
            time.sleep(retry_sleeps(attempt, max(1, int(backoff_factor)))[-1])
            if start is not None:
                body.seek(start)
        raise AssertionError("unreachable")  # pragma: no cover

    send_again_if_cut_off.retries_cut_off_answers = True  # type: ignore[attr-defined]
    send_again_if_cut_off.__wrapped__ = send  # type: ignore[attr-defined]
    rest_utils._get_http_response_with_retries = send_again_if_cut_off


# --- after a run failed -----------------------------------------------------------------------

_ARTIFACT_URL = re.compile(r"/api/2\.0/mlflow-artifacts/artifacts/([^\s?]+)")
_TOO_MANY_5XX = re.compile(r"too many 5\d\d error responses")


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_server_error(exc: BaseException) -> bool:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500
    return bool(_TOO_MANY_5XX.search(str(exc)))


def artifact_store_failure(exc: BaseException, tracking_uri: str) -> str | None:
    """A clear message when `exc` is the tracking server failing to store an artifact, else None.

    Artifacts are proxied: the trainer PUTs them to the server, which writes them to its store
    (S3). When that store is down the server answers 5xx, MLflow retries, and what surfaces is a
    long "too many 500 error responses" about an `mlflow-artifacts` URL.
    """
    chain = list(_exception_chain(exc))
    urls = [m for e in chain if (m := _ARTIFACT_URL.search(str(e)))]
    if not urls or not any(_is_server_error(e) for e in chain):
        return None
    artifact = "mlflow-artifacts:/" + urls[0].group(1).rstrip(".,;:'\")")
    return (
        f"artifact store unavailable: the tracking server at {tracking_uri} could not store "
        f"{artifact} (HTTP 5xx from its artifact proxy after retries): is its artifact store "
        "(S3) up? Once it is, run the trainer again."
    )


def tracking_server_lost(exc: BaseException, tracking_uri: str) -> str | None:
    """A clear message when `exc` is the tracking server going away in the middle of a run (every
    retry of a request was refused or cut off), else None."""
    lost = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)
    if not any(isinstance(e, lost) for e in _exception_chain(exc)):
        return None
    return (
        f"lost the tracking server at {tracking_uri}: it did not answer for the whole retry "
        "window (MLSTACK_RETRY_WINDOW_SECONDS)"
    )


def describe_run_failure(exc: BaseException, tracking_uri: str) -> str:
    """The one line a user reads when a started run fails."""
    known = artifact_store_failure(exc, tracking_uri) or tracking_server_lost(exc, tracking_uri)
    # An error the fitting process reported already names its own type (mlstack.fitting).
    detail = str(exc) if getattr(exc, "names_its_type", False) else f"{type(exc).__name__}: {exc}"
    return f"{known} ({detail[:300]})" if known else f"training failed: {detail}"


def mark_runs_failed(
    uri: str,
    run_ids: Sequence[str],
    window_seconds: float,
    auth: tuple[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Leave none of `run_ids` RUNNING: end those still RUNNING as FAILED; returns those it could
    not mark.

    MLflow's `with start_run()` already tries on the way out, but the server may be down at that
    moment: keep trying for `window_seconds` (1, 2, 4 ... 10 s apart, one attempt per call, so the
    window is the bound). Runs that already ended (a finished sweep child) are left as they are.
    """
    pending = list(dict.fromkeys(run_ids))
    if not uri.startswith(("http://", "https://")):
        return _mark_runs_failed_with_client(pending)
    base = uri.rstrip("/") + "/api/2.0/mlflow/runs"
    deadline = time.monotonic() + window_seconds
    delay = 1.0
    while True:
        last_error = ""
        for run_id in list(pending):
            try:
                _fail_if_running(base, run_id, auth)
            except (requests.RequestException, _RunUpdateError, ValueError, KeyError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                break  # the server is down or failing: try the rest on the next round
            pending.remove(run_id)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            return pending
        pause = min(delay, remaining)  # the last try is at the end of the window
        log(f"cannot mark run(s) FAILED at {uri} yet ({last_error[:160]}); retry in {pause:.3g}s")
        time.sleep(pause)
        delay = min(delay * 2, 10.0)


class _RunUpdateError(Exception):
    """The tracking server answered, but not with success."""


def _fail_if_running(base: str, run_id: str, auth: tuple[str, str] | None) -> None:
    response = requests.get(f"{base}/get", params={"run_id": run_id}, timeout=10, auth=auth)
    if not response.ok:
        raise _RunUpdateError(f"HTTP {response.status_code}: {response.text[:200]}")
    if response.json()["run"]["info"]["status"] != "RUNNING":
        return
    update = {"run_id": run_id, "status": "FAILED", "end_time": int(time.time() * 1000)}
    response = requests.post(f"{base}/update", json=update, timeout=10, auth=auth)
    if not response.ok:
        raise _RunUpdateError(f"HTTP {response.status_code}: {response.text[:200]}")


def _mark_runs_failed_with_client(run_ids: list[str]) -> list[str]:
    """A file or database tracking URI: no server to wait for, one attempt each."""
    import mlflow

    client = mlflow.MlflowClient()
    unmarked = []
    for run_id in run_ids:
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FAILED")
        except Exception:  # report, never mask the original failure
            unmarked.append(run_id)
    return unmarked


# MLflow's own experiment tag for what an experiment is about: "custom_model_development" is the
# kind its UI labels "Machine learning" (the others: "genai_development", and the "*_inferred"
# guesses the UI makes itself). MLflow 3.17's UI does not yet pick its GenAI / Model training view
# from it (that is a per-browser switch, docs/browser-tests.md), but the tag says what these
# experiments are to the UI, to `search_experiments` filters and to later MLflow versions.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def use_experiment(mlflow: Any, name: str) -> Any:
    """`mlflow.set_experiment(name)` that also holds when trainers race to create `name`.

    MLflow 3.17's `set_experiment`, when another process creates the experiment between its
    lookup and its create, returns the experiment without making it the active one (its
    RESOURCE_ALREADY_EXISTS branch returns early): that trainer's runs then land in the Default
    experiment. Seen in CI with three trainers started together on a new experiment. Setting it
    again by id, only in that case, makes it active; it costs one request."""
    from mlflow.tracking.fluent import _get_experiment_id

    experiment = mlflow.set_experiment(name)
    if _get_experiment_id() != experiment.experiment_id:
        experiment = mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment


def mark_as_model_training(client: Any, experiment: Any) -> None:
    """Tag `experiment` (an mlflow Experiment) as model training, once: no call when it is.

    Trainers started together on a new experiment race to tag it: MLflow's SQL store inserts the
    tag row, so every writer but the first gets a unique-key error. Losing that race is success
    when the tag the winner wrote is ours; anything else is re-raised."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING_KIND:
        return
    try:
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        )
    except Exception:
        tags = client.get_experiment(experiment.experiment_id).tags
        if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
            raise
