"""The ASGI app of `mlstack serve`: a raw ASGI callable (no framework) on uvicorn/uvloop/httptools.

Routes:
    GET  /health                       liveness: 200 as soon as the process is up
    GET  /ping                         readiness: 200 once the default model is loaded, else 503
    GET  /version                      mlstack + MLflow versions, model URI and version served
    GET  /metrics                      Prometheus text format
    GET  /models                       alias holders discovered in the registry, and what is loaded
    POST /invocations                  MLflow's scoring protocol, default model
    POST /models/<name>/invocations    the same for registered model <name> holding the alias

Every answer from an invocation carries `X-Model-Version` (and `X-Model-Name`) of the exact version
that computed it. Errors use MLflow's JSON shape (`error_code`, `message`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlstack import __version__
from mlstack.serving import v2
from mlstack.serving.auth import CHALLENGE, OPEN_PATHS, BearerAuth
from mlstack.serving.fastpath import prepare_fast_path_thread
from mlstack.serving.metrics import ServingMetrics
from mlstack.serving.model import JSON, Answer, ServedModel, error_answer
from mlstack.serving.registry import ModelSlot, RegistryFollower
from mlstack.serving.rollout import (
    Guard,
    RolloutConfig,
    ShadowWorker,
    agreement,
    coin,
    sticky_bucket,
)
from mlstack.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_logger = logging.getLogger("mlstack.serving")

_PLAIN_JSON = frozenset((b"application/json", b"application/json; charset=utf-8"))
_MODELS_PREFIX = "/models/"
_INVOCATIONS_SUFFIX = "/invocations"


@dataclass(frozen=True)
class ServeConfig:
    model_uri: str
    discovery_alias: str
    tracking_uri: str
    poll_interval: float
    max_body_bytes: int
    request_timeout: float
    download_timeout: float | None = None  # model downloads; None: MLflow's HTTP timeout
    multiproc_dir: Path | None = None
    tokens_file: Path | None = None
    metrics_tokens_file: Path | None = None
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServeConfig:
        return cls(
            model_uri=settings.effective_model_uri,
            discovery_alias=settings.serve_alias,
            tracking_uri=settings.tracking_uri,
            poll_interval=settings.poll_interval_seconds,
            max_body_bytes=settings.max_body_bytes,
            request_timeout=settings.request_timeout_seconds,
            download_timeout=settings.model_download_timeout_seconds,
            multiproc_dir=settings.prometheus_multiproc_dir,
            tokens_file=settings.serve_tokens_file,
            metrics_tokens_file=settings.serve_metrics_tokens_file,
            rollout=RolloutConfig(
                challenger_alias=settings.serve_challenger_alias.strip() or None,
                canary_weight=settings.canary_weight,
                sticky_header=(
                    settings.canary_sticky_header.strip().lower().encode()
                    if settings.canary_sticky_header
                    else None
                ),
                shadow_percent=settings.shadow_percent,
                tolerance=settings.shadow_tolerance,
                guard_max_error_ratio=settings.guard_max_error_ratio,
                guard_max_p99_seconds=settings.guard_max_p99_seconds,
                guard_window_seconds=settings.guard_window_seconds,
                guard_min_requests=settings.guard_min_requests,
                shadow_max_cpu=settings.shadow_max_cpu,
            ),
        )


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class ServingApp:
    """ASGI application; one instance per worker process."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.mlflow_version = importlib.metadata.version("mlflow")  # without importing MLflow
        self.metrics = ServingMetrics(config.multiproc_dir)
        self.follower = RegistryFollower(
            default_uri=config.model_uri,
            discovery_alias=config.discovery_alias,
            poll_interval=config.poll_interval,
            tracking_uri=config.tracking_uri,
            on_swap=self._on_swap,
            on_load_failure=self._on_load_failure,
            challenger_alias=config.rollout.challenger_alias,
            guard_factory=self._new_guard,
            on_challenger_change=self._on_challenger_change,
            download_timeout=config.download_timeout,
        )
        self.rollout = config.rollout
        # Requests being answered; the shadow worker runs only while there are none.
        self._inflight = 0
        self._idle = threading.Event()
        self._idle.set()
        self.shadow = ShadowWorker(
            config.rollout.shadow_queue,
            self._shadow_dropped,
            self._idle,
            config.rollout.shadow_max_cpu,
        )
        self._fast_thread_ready = False
        # Read once at start: a missing or bad tokens file stops the server before it listens.
        self.auth = BearerAuth.from_file(config.tokens_file) if config.tokens_file else None
        # Scrape-only tokens (Prometheus): /metrics and nothing else. Without `auth` they would
        # guard nothing, so they are not even read.
        self.metrics_auth = (
            BearerAuth.from_file(config.metrics_tokens_file)
            if config.metrics_tokens_file and self.auth is not None
            else None
        )

    def _on_swap(self, slot: ModelSlot, model: ServedModel) -> None:
        self.metrics.model_served(slot.key, model.version)
        self.metrics.model_identity(slot.key, model.name, model.version)
        guard = slot.guard
        if slot.is_challenger and guard is not None and guard.state.load_failure:
            guard.reset(model.version)  # it failed to load before, and loads now

    def _on_load_failure(self, slot: ModelSlot) -> None:
        self.metrics.model_load_failed(slot.key)
        if slot.is_challenger and slot.guard is not None:
            slot.guard.trip(slot.last_error or "failed to load", load_failure=True)

    # --- rollouts -----------------------------------------------------------------------------
    def _new_guard(self, challenger: ModelSlot) -> Guard:
        return Guard(self.rollout, self._guard_changed, model=challenger.model_name)

    def _guard_changed(self, guard: Guard) -> None:
        state = guard.state
        self.metrics.guard_state(guard.model, state.version, state.tripped)

    def _on_challenger_change(
        self, slot: ModelSlot, challenger: ModelSlot, version: str | None
    ) -> None:
        """A new challenger version (guard cleared) or none (guard cleared, gauge 0)."""
        if challenger.guard is not None:
            challenger.guard.reset(version)
        self.metrics.challenger_version(challenger.model_name, version)

    def _shadow_dropped(self) -> None:
        self.metrics.shadow_dropped.inc()

    def _pick(self, slot: ModelSlot, scope: Scope) -> tuple[ModelSlot, ServedModel | None]:
        """The slot (champion or challenger) that answers this request, and its model."""
        challenger = slot.challenger
        weight = self.rollout.canary_weight
        if challenger is None or weight <= 0:
            return slot, slot.current
        model = challenger.current
        guard = challenger.guard
        if model is None or guard is None or guard.tripped or guard.state.version != model.version:
            return slot, slot.current
        header = self.rollout.sticky_header
        if header is not None:
            for key, value in scope["headers"]:
                if key == header:
                    chosen = sticky_bucket(value) < weight
                    return (challenger, model) if chosen else (slot, slot.current)
        return (challenger, model) if coin(weight) else (slot, slot.current)

    def _shadow_target(self, slot: ModelSlot) -> tuple[ModelSlot, ServedModel] | None:
        challenger = slot.challenger
        if challenger is None or self.rollout.shadow_percent <= 0:
            return None
        model = challenger.current
        guard = challenger.guard
        if model is None or guard is None or guard.tripped or guard.state.version != model.version:
            return None
        if not coin(self.rollout.shadow_percent):
            return None
        return challenger, model

    def _score_sync(self, model: ServedModel, body: bytes, content_type: bytes) -> Answer:
        """Scoring on a worker thread (shadow copies and canary re-checks)."""
        if model.fast is not None and content_type.lower() in _PLAIN_JSON:
            fast_body = model.fast.try_predict(body)
            if fast_body is not None:
                return Answer(200, fast_body)
        return model.score_with_mlflow(body, content_type.decode("latin-1"))

    def _shadow_run(
        self,
        challenger: ModelSlot,
        model: ServedModel,
        body: bytes,
        content_type: bytes,
        champion_body: bytes,
    ) -> None:
        started = time.perf_counter()
        answer = self._score_sync(model, body, content_type)
        seconds = time.perf_counter() - started
        name, version = challenger.model_name, model.version_label
        self.metrics.version_answer(
            name, version, challenger.alias_label, "shadow", answer.status, seconds
        )
        ok = answer.status == 200  # the champion answered this request with 200
        if challenger.guard is not None and challenger.guard.state.version == model.version:
            challenger.guard.record(ok, seconds)
        if ok:
            agree, total = agreement(champion_body, answer.body, self.rollout.tolerance)
            self.metrics.shadow_compared(name, version, agree, total - agree)
        else:
            self.metrics.shadow_compared(name, version, 0, 0, error=True)

    def _canary_recheck(
        self,
        champion: ServedModel,
        challenger: ModelSlot,
        model: ServedModel,
        body: bytes,
        content_type: bytes,
        seconds: float,
    ) -> None:
        """The challenger refused a request (4xx): its error only if the champion takes it."""
        champion_answer = self._score_sync(champion, body, content_type)
        guard = challenger.guard
        if guard is not None and guard.state.version == model.version:
            guard.record(champion_answer.status >= 400, seconds)

    def _rollouts_answer(self) -> Answer:
        follower = self.follower
        slots = [follower.default]
        with follower._lock:
            slots += [s for s in follower._slots.values() if s is not follower.default]
        models: dict[str, Any] = {}
        for slot in slots:
            if slot.ref.name is None:
                continue
            challenger = slot.challenger
            entry: dict[str, Any] = {
                "champion": {"alias": slot.alias_label, "version": slot.served_version},
                "challenger": None,
            }
            if challenger is not None and challenger.wanted_version is not None:
                current = challenger.current
                loaded = current is not None and current.version == challenger.wanted_version
                state = "serving" if loaded else "loading"
                if challenger.last_error:
                    state = "failed"
                entry["challenger"] = {
                    "alias": challenger.alias_label,
                    "version": challenger.wanted_version,
                    "state": state,
                    "error": challenger.last_error,
                    "guard": challenger.guard.describe() if challenger.guard else None,
                    "shadow": self.metrics.shadow_summary(
                        challenger.model_name, challenger.wanted_version
                    ),
                }
            models[slot.ref.name] = entry
        rollout = self.rollout
        body = {
            "challenger_alias": rollout.challenger_alias,
            "canary_weight": rollout.canary_weight,
            "sticky_header": rollout.sticky_header.decode() if rollout.sticky_header else None,
            "shadow_percent": rollout.shadow_percent,
            "guard": {
                "max_error_ratio": rollout.guard_max_error_ratio,
                "max_p99_seconds": rollout.guard_max_p99_seconds,
                "window_seconds": rollout.guard_window_seconds,
                "min_requests": rollout.guard_min_requests,
            },
            "models": models,
        }
        return Answer(200, orjson.dumps(body))

    # --- ASGI entry point ---------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.follower.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                _logger.info(
                    "mlstack serve %s: %s from %s (poll every %gs)",
                    __version__,
                    self.config.model_uri,
                    self.config.tracking_uri,
                    self.config.poll_interval,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.follower.stop()
                self.shadow.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._inflight += 1
        if self._inflight == 1:
            self._idle.clear()
        try:
            await self._http_inner(scope, receive, send)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _http_inner(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        route, model_label = path, ""
        try:
            if (
                self.auth is not None
                and path not in OPEN_PATHS
                and not self._authorized(scope, path)
            ):
                route = "unauthenticated"  # one label value, whatever the path
                message = "Missing or invalid bearer token (Authorization: Bearer <token>)"
                answer = error_answer(401, "UNAUTHENTICATED", message)
                status = await self._send(send, answer, [CHALLENGE])
            elif path == "/invocations":
                route, model_label = path, "default"
                status = await self._invocations(self.follower.default, scope, receive, send)
            elif path.startswith(_MODELS_PREFIX) and path.endswith(_INVOCATIONS_SUFFIX):
                name = path[len(_MODELS_PREFIX) : -len(_INVOCATIONS_SUFFIX)]
                # Only registry names as label values: client-chosen paths must not grow /metrics.
                known = name in self.follower.discovered
                route, model_label = "/models/{name}/invocations", name if known else "unknown"
                status = await self._named_invocations(name, scope, receive, send)
            elif path == v2.V2_PREFIX or path.startswith("/v2/"):
                route, model_label, status = await self._v2(path, method, scope, receive, send)
            elif path in ("/health", "/ping", "/version", "/metrics", "/models", "/rollouts"):
                if method not in ("GET", "HEAD"):
                    answer = error_answer(405, "BAD_REQUEST", f"{method} not allowed on {path}")
                else:
                    answer = self._info_answer(path)
                status = await self._send(send, answer)
            else:
                route = "other"
                answer = error_answer(404, "ENDPOINT_NOT_FOUND", f"No route {method} {path}")
                status = await self._send(send, answer)
        except _Disconnected:
            status = 499
        except Exception:
            _logger.exception("unhandled error on %s %s", method, path)
            status = 500
            with contextlib.suppress(Exception):  # fails if the response had already started
                await self._send(send, error_answer(500, "INTERNAL_ERROR", "Internal server error"))
        self.metrics.observe(route, model_label, status, time.perf_counter() - started)

    def _authorized(self, scope: Scope, path: str) -> bool:
        assert self.auth is not None
        for key, value in scope["headers"]:
            if key == b"authorization":
                if self.auth.allows(value):
                    return True
                return path == "/metrics" and (
                    self.metrics_auth is not None and self.metrics_auth.allows(value)
                )
        return False

    # --- informational routes -----------------------------------------------------------------
    def _info_answer(self, path: str) -> Answer:
        default = self.follower.default
        model = default.current
        if path == "/health":
            return Answer(200, b'{"status":"ok"}')
        if path == "/ping":
            if model is not None:
                return Answer(200, orjson.dumps({"status": "ready", "version": model.version}))
            return error_answer(503, "TEMPORARILY_UNAVAILABLE", self._not_loaded_message(default))
        if path == "/version":
            return Answer(
                200,
                orjson.dumps(
                    {
                        "mlstack": __version__,
                        "mlflow": self.mlflow_version,
                        "model_uri": self.config.model_uri,
                        "model_version": model.version if model else None,
                        "loaded_uri": model.uri if model else None,
                        "fast_path": bool(model and model.fast),
                        "models": self.follower.loaded_models(),
                    }
                ),
            )
        if path == "/rollouts":
            return self._rollouts_answer()
        if path == "/models":
            follower = self.follower
            return Answer(
                200,
                orjson.dumps(
                    {
                        "alias": follower.discovery_alias,
                        "registry": follower.discovered,
                        "loaded": follower.loaded_models(),
                    }
                ),
            )
        body, content_type = self.metrics.render()
        return Answer(200, body, content_type)

    @staticmethod
    def _not_loaded_message(slot: ModelSlot) -> str:
        message = f"No model loaded yet for {slot.ref.uri}"
        if slot.last_error:
            message += f" ({slot.last_error})"
        return message

    # --- the Open Inference Protocol (v2) -----------------------------------------------------
    def _slot_by_name(self, name: str) -> ModelSlot | None:
        default = self.follower.default
        if default.ref.name == name:
            return default
        return self.follower.named_slot(name)

    async def _v2(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> tuple[str, str, int]:
        if path in ("/v2", "/v2/health/live", "/v2/health/ready"):
            if method not in ("GET", "HEAD"):
                return path, "", await self._send(send, v2.v2_error(405, f"{method} not allowed"))
            if path == "/v2":
                info = {"name": "mlstack", "version": __version__, "extensions": []}
                answer = Answer(200, orjson.dumps(info))
            elif path == "/v2/health/live":
                answer = Answer(200, b'{"live":true}')
            elif self.follower.default.current is not None:
                answer = Answer(200, b'{"ready":true}')
            else:  # the protocol: a 4xx means "not ready"
                answer = Answer(400, b'{"ready":false}')
            return path, "", await self._send(send, answer)
        parsed = v2.parse_model_route(path)
        if parsed is None:
            answer = v2.v2_error(404, f"No route {method} {path}")
            return "other", "", await self._send(send, answer)
        route = f"/v2/models/{{name}}/{parsed.kind}"
        known = parsed.name in self.follower.discovered or (
            parsed.name == self.follower.default.ref.name
        )
        label = parsed.name if known else "unknown"
        wanted = "POST" if parsed.kind == "infer" else "GET"
        if method != wanted and not (wanted == "GET" and method == "HEAD"):
            answer = v2.v2_error(405, f"Use {wanted} for {path}")
            return route, label, await self._send(send, answer)
        slot = self._slot_by_name(parsed.name)
        if slot is None:
            message = f"Unknown model {parsed.name!r}: no registered model of that name is served"
            return route, label, await self._send(send, v2.v2_error(404, message))
        if slot.current is None and slot.loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(slot.loading)), self.config.request_timeout
                )
        champion = slot.current
        target, model = slot, champion
        challenger = slot.challenger
        if parsed.version is not None:
            # An explicit version: the champion's, or the challenger's (whatever the canary says).
            if (
                challenger is not None
                and challenger.current is not None
                and (
                    challenger.current.version == parsed.version
                    and (champion is None or champion.version != parsed.version)
                )
            ):
                target, model = challenger, challenger.current
            elif model is None or model.version != parsed.version:
                serving = model.version if model is not None else "none"
                message = f"Version {parsed.version} of {parsed.name!r} is not served (serving: {serving})"
                return route, label, await self._send(send, v2.v2_error(404, message))
        elif parsed.kind == "infer" and champion is not None:
            target, model = self._pick(slot, scope)
            model = model or champion
        if parsed.kind == "ready":
            ready = model is not None
            body = orjson.dumps({"name": parsed.name, "ready": ready})
            return route, label, await self._send(send, Answer(200 if ready else 400, body))
        if model is None:
            answer = v2.v2_error(503, self._not_loaded_message(slot))
            return route, label, await self._send(send, answer)
        if parsed.kind == "metadata":
            versions = [model.version_label]
            if parsed.version is None and challenger is not None and challenger.current is not None:
                versions.append(challenger.current.version_label)
            meta = v2.model_metadata(parsed.name, versions, model)
            return route, label, await self._send(send, Answer(200, orjson.dumps(meta)))
        try:
            body = await self._read_body(scope, receive)
        except _BodyTooLarge:
            message = f"Request body exceeds the limit of {self.config.max_body_bytes} bytes"
            return route, label, await self._send(send, v2.v2_error(413, message))
        started = time.perf_counter()
        answer, scoring_path = await self._v2_infer(parsed.name, model, body)
        self.metrics.paths.labels(slot.key, scoring_path).inc()
        alias = target.alias_label
        status = await self._send(send, answer, model.response_headers(scoring_path, alias))
        seconds = time.perf_counter() - started
        self.metrics.version_answer(
            target.model_name, model.version_label, alias, "live", status, seconds
        )
        if target is not slot and parsed.version is None and champion is not None:
            guard = target.guard
            if 400 <= status < 500:
                self.shadow.submit(
                    lambda: self._v2_recheck(parsed.name, champion, target, model, body, seconds)
                )
            elif guard is not None and guard.state.version == model.version:
                guard.record(status < 500, seconds)
        elif (
            target is slot
            and status == 200
            and parsed.version is None
            and (shadow := self._shadow_target(slot)) is not None
        ):
            challenger_slot, challenger_model = shadow
            champion_body = answer.body
            self.shadow.submit(
                lambda: self._v2_shadow(
                    parsed.name, challenger_slot, challenger_model, body, champion_body
                )
            )
        return route, label, status

    def _v2_recheck(
        self,
        name: str,
        champion: ServedModel,
        challenger: ModelSlot,
        model: ServedModel,
        body: bytes,
        seconds: float,
    ) -> None:
        champion_answer = v2.infer_sync(name, champion, body)
        guard = challenger.guard
        if guard is not None and guard.state.version == model.version:
            guard.record(champion_answer.status >= 400, seconds)

    def _v2_shadow(
        self,
        name: str,
        challenger: ModelSlot,
        model: ServedModel,
        body: bytes,
        champion_body: bytes,
    ) -> None:
        started = time.perf_counter()
        answer = v2.infer_sync(name, model, body)
        seconds = time.perf_counter() - started
        version = model.version_label
        self.metrics.version_answer(
            challenger.model_name, version, challenger.alias_label, "shadow", answer.status, seconds
        )
        ok = answer.status == 200
        if challenger.guard is not None and challenger.guard.state.version == model.version:
            challenger.guard.record(ok, seconds)
        if ok:
            agree, total = agreement(champion_body, answer.body, self.rollout.tolerance)
            self.metrics.shadow_compared(challenger.model_name, version, agree, total - agree)
        else:
            self.metrics.shadow_compared(challenger.model_name, version, 0, 0, error=True)

    async def _v2_infer(self, name: str, model: ServedModel, body: bytes) -> tuple[Answer, str]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return v2.v2_error(400, f"The request body is not JSON: {exc}"), "mlflow"
        if model.fast is not None:
            if not self._fast_thread_ready:
                prepare_fast_path_thread()
                self._fast_thread_ready = True
            array = v2.fast_lane_array(payload, model)
            if array is not None:
                try:
                    predictions = model.fast.predict_array(array)
                except Exception:  # the general path below reproduces (and reports) it
                    predictions = None
                if predictions is not None:
                    body_out = v2.response_body(name, model.version, payload.get("id"), predictions)
                    return Answer(200, body_out), "fast"
        try:
            rows, names = v2.request_rows(payload, model)
            predictions, scoring_path = None, "fast"
            if model.fast is not None:
                predictions = v2.predict_fast(model, rows)
            if predictions is None:
                scoring_path = "mlflow"
                work = asyncio.to_thread(v2.predict_pyfunc, model, rows, names)
                try:
                    predictions = await asyncio.wait_for(work, self.config.request_timeout)
                except TimeoutError:
                    message = "Request processing time exceeded limit"
                    return v2.v2_error(504, message), scoring_path
        except v2.V2Error as exc:
            return v2.v2_error(exc.status, exc.message), "mlflow"
        request_id = payload.get("id")
        out = v2.response_body(name, model.version, request_id, predictions)
        return Answer(200, out), scoring_path

    # --- invocations --------------------------------------------------------------------------
    async def _named_invocations(
        self, name: str, scope: Scope, receive: Receive, send: Send
    ) -> int:
        follower = self.follower
        slot = follower.named_slot(name)
        if slot is None:
            alias = follower.discovery_alias
            state = "" if follower.discovery_ok else " (registry not listed yet)"
            message = f"No registered model {name!r} holds alias @{alias}{state}"
            return await self._send(send, error_answer(404, "RESOURCE_DOES_NOT_EXIST", message))
        if slot.current is None:
            loading = slot.loading
            if loading is not None:
                # First request to this model: wait for its lazy load, within the request timeout.
                try:
                    await asyncio.wait_for(
                        asyncio.shield(asyncio.wrap_future(loading)), self.config.request_timeout
                    )
                except TimeoutError:
                    pass
                except Exception:
                    _logger.debug("lazy load of %s failed", name, exc_info=True)
        return await self._invocations(slot, scope, receive, send)

    async def _invocations(
        self, slot: ModelSlot, scope: Scope, receive: Receive, send: Send
    ) -> int:
        if scope["method"] != "POST":
            answer = error_answer(405, "BAD_REQUEST", "Use POST for invocations")
            return await self._send(send, answer)
        champion = slot.current  # one reference for the whole request: never a mixed answer
        if champion is None:
            answer = error_answer(503, "TEMPORARILY_UNAVAILABLE", self._not_loaded_message(slot))
            return await self._send(send, answer)
        target, model = self._pick(slot, scope)
        if model is None:  # the champion vanished between the two reads: it never does, but
            target, model = slot, champion
        alias = target.alias_label
        try:
            body = await self._read_body(scope, receive)
        except _BodyTooLarge:
            limit = self.config.max_body_bytes
            message = f"Request body exceeds the limit of {limit} bytes"
            answer = error_answer(413, "RESOURCE_EXHAUSTED", message)
            return await self._send(send, answer, model.response_headers("", alias))
        started = time.perf_counter()
        content_type = b""
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
                break
        answer = None
        scoring_path = "mlflow"
        if model.fast is not None and content_type.lower() in _PLAIN_JSON:
            if not self._fast_thread_ready:  # here, not at startup: keeps sklearn's import lazy
                prepare_fast_path_thread()
                self._fast_thread_ready = True
            fast_body = model.fast.try_predict(body)
            if fast_body is not None:
                answer = Answer(200, fast_body)
                scoring_path = "fast"
        if answer is None:
            answer = await self._score_with_mlflow(model, body, content_type.decode("latin-1"))
        self.metrics.paths.labels(slot.key, scoring_path).inc()
        headers = model.response_headers(scoring_path, alias)
        status = await self._send(send, answer, headers)
        seconds = time.perf_counter() - started
        self.metrics.version_answer(
            target.model_name, model.version_label, alias, "live", status, seconds
        )
        if target is not slot:  # a canary answer: the guard's
            guard = target.guard
            if 400 <= status < 500:
                self.shadow.submit(
                    lambda: self._canary_recheck(
                        champion, target, model, body, content_type, seconds
                    )
                )
            elif guard is not None and guard.state.version == model.version:
                guard.record(status < 500, seconds)
        elif status == 200 and (shadow := self._shadow_target(slot)) is not None:
            challenger, challenger_model = shadow
            champion_body = answer.body
            self.shadow.submit(
                lambda: self._shadow_run(
                    challenger, challenger_model, body, content_type, champion_body
                )
            )
        return status

    async def _score_with_mlflow(
        self, model: ServedModel, body: bytes, content_type: str
    ) -> Answer:
        work = asyncio.to_thread(model.score_with_mlflow, body, content_type)
        try:
            return await asyncio.wait_for(work, self.config.request_timeout)
        except TimeoutError:
            message = "Request processing time exceeded limit"
            return error_answer(504, "DEADLINE_EXCEEDED", message)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.config.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    if int(value) > limit:
                        raise _BodyTooLarge
                except ValueError:
                    pass
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _send(
        send: Send, answer: Answer, extra_headers: list[tuple[bytes, bytes]] | None = None
    ) -> int:
        headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        if extra_headers:
            headers.extend(extra_headers)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        return answer.status


def configure_process(settings: Settings) -> None:
    """Logging and the MLflow client environment of a serving process."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s"
        )
    logging.getLogger("mlstack").setLevel(logging.INFO)
    # Registry polls must fail fast when the registry is down (MLflow retries 7x with backoff).
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.registry_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(math.ceil(settings.registry_timeout_seconds))
    # What MLflow's own scoring server sets: some flavors behave differently when serving.
    os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"


def create_app() -> ServingApp:
    """uvicorn factory (`mlstack.serving.app:create_app`): config from the environment."""
    settings = Settings()  # not the cached one: `mlstack serve` sets the env for its workers
    configure_process(settings)
    return ServingApp(ServeConfig.from_settings(settings))


__all__ = ["JSON", "ServeConfig", "ServingApp", "create_app"]
