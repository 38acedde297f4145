"""Following the model registry: resolve, poll, load in the background, swap atomically.

One poller thread per server process asks the registry, every `poll_interval` seconds:
- which version the default URI points at (`models:/name@alias`: the alias; `models:/name/latest`:
  the highest version; `models:/name/3`: fixed, polled only until it exists; any other URI: loaded
  once, retried until it loads);
- which registered models hold the alias (one `search_registered_models` listing, which carries
  every model's aliases), for `/models/<name>/invocations`.

Loads run on one loader thread, never on the request path's event loop. A slot's `current`
reference is replaced only once the new version is fully loaded (and its fast path self-checked),
so a request either sees the old version or the new one, never a mix and never a gap. A failed
load leaves the old version serving and is logged with its reason; the same version is retried
only after `FAILED_RETRY_SECONDS`. When the registry is unreachable, the loaded models keep serving.

Named models (`/models/<name>/invocations`) are discovered on every poll but loaded lazily, on
their first request (which waits for the load, up to the request timeout); once loaded they follow
their alias like the default model. A model that loses the alias is dropped on the next successful
listing. The default model's slot is shared when its name is also discovered.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from mlstack.serving.model import ServedModel, load_served_model

_logger = logging.getLogger("mlstack.serving")

FAILED_RETRY_SECONDS = 60.0
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")

RefKind = Literal["alias", "version", "latest", "other"]


@dataclass(frozen=True)
class ModelRef:
    """What a model URI points at, as far as following the registry is concerned."""

    uri: str
    kind: RefKind
    name: str | None = None
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        match = _MODELS_URI.match(uri.strip())
        if not match:
            return cls(uri, "other")
        name = match["name"]
        if match["alias"]:
            return cls(uri, "alias", name=name, alias=match["alias"])
        version = match["version"]
        if version.lower() == "latest":
            return cls(uri, "latest", name=name)
        if version.isdigit():
            return cls(uri, "version", name=name, version=version)
        return cls(uri, "other", name=name)  # a stage: let MLflow resolve it at load time

    def concrete_uri(self, version: str | None) -> str:
        if self.name is not None and version is not None and self.kind != "other":
            return f"models:/{self.name}/{version}"
        return self.uri


@dataclass(eq=False)
class ModelSlot:
    """A served endpoint: the model currently answering and what the registry wants there."""

    key: str
    ref: ModelRef
    current: ServedModel | None = None
    wanted_version: str | None = None
    loading: Future[ServedModel | None] | None = None
    failed: dict[str, float] = field(default_factory=dict)  # version -> when it failed
    last_error: str | None = None
    loaded_event: threading.Event = field(default_factory=threading.Event)
    alias_label: str = ""  # the alias this slot answers for (X-Model-Alias)
    is_challenger: bool = False
    challenger: ModelSlot | None = None  # the challenger beside this champion, when followed
    guard: Any = None  # the challenger's guard (rollout.Guard), made by the guard factory

    @property
    def model_name(self) -> str:
        return self.ref.name or self.key

    @property
    def served_version(self) -> str | None:
        model = self.current
        return model.version if model is not None else None


def _is_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND")


class RegistryFollower:
    """Owns the slots, the poller thread and the loader thread of one server process."""

    def __init__(
        self,
        default_uri: str,
        discovery_alias: str | None,
        poll_interval: float,
        tracking_uri: str,
        on_swap: Callable[[ModelSlot, ServedModel], None] | None = None,
        on_load_failure: Callable[[ModelSlot], None] | None = None,
        challenger_alias: str | None = None,
        guard_factory: Callable[[ModelSlot], Any] | None = None,
        on_challenger_change: Callable[[ModelSlot, ModelSlot, str | None], None] | None = None,
        download_timeout: float | None = None,
    ) -> None:
        self.default = ModelSlot("default", ModelRef.parse(default_uri))
        ref = self.default.ref
        # /models/<name>/invocations serves the default URI's alias, else the configured one.
        self.discovery_alias = ref.alias if ref.kind == "alias" else discovery_alias
        self.default.alias_label = ref.alias or ""
        # The challenger alias is followed beside every champion with a registry name; never
        # the champion's own alias.
        self.challenger_alias = (
            challenger_alias
            if challenger_alias and challenger_alias != self.discovery_alias
            else None
        )
        self._guard_factory = guard_factory
        self._on_challenger_change = on_challenger_change
        self.download_timeout = download_timeout
        self.challengers: dict[str, str] = {}  # name -> version holding the challenger alias
        self.poll_interval = poll_interval
        self.tracking_uri = tracking_uri
        self._on_swap = on_swap
        self._on_load_failure = on_load_failure
        self._slots: dict[str, ModelSlot] = {}  # name -> slot, for /models/<name>/invocations
        self.discovered: dict[str, str] = {}  # name -> version holding the alias
        self.discovery_ok = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlstack-loader")
        self._poller: threading.Thread | None = None
        self._client: Any = None
        self._registry_down_since: float | None = None
        self.last_poll_ok: float | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling. Returns at once: MLflow is imported on the poller thread, so the
        server answers /health while it loads."""
        self._poller = threading.Thread(target=self._run, name="mlstack-poller", daemon=True)
        self._poller.start()

    def _connect(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        # Model downloads (`models:/` URIs) use the process-wide registry URI.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def stop(self) -> None:
        self._stop.set()
        self._loader.shutdown(wait=False, cancel_futures=True)
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._client is None:
                    self._connect()
                self.poll_once()
            except Exception:
                _logger.exception("registry poll failed unexpectedly")
            # Polls on the wall clock's multiples of the interval: every worker process (and
            # every replica) asks the registry at the same instants, so they see the same alias
            # and switch together (each after its own load), never one interval apart.
            interval = self.poll_interval
            self._stop.wait(interval - (time.time() % interval) or interval)

    # --- polling ----------------------------------------------------------------------------
    def _registry_call(self, what: str, call: Callable[[], Any]) -> tuple[bool, Any]:
        """(reachable, result); result None when the registry says it does not exist."""
        try:
            result = call()
        except Exception as exc:
            if _is_not_found(exc):
                self._registry_up()
                return True, None
            if self._registry_down_since is None:
                self._registry_down_since = time.monotonic()
                _logger.warning(
                    "registry %s unreachable (%s: %s); still serving %s",
                    self.tracking_uri,
                    what,
                    str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                    self._serving_summary(),
                )
            return False, None
        self._registry_up()
        return True, result

    def _registry_up(self) -> None:
        if self._registry_down_since is not None:
            down = time.monotonic() - self._registry_down_since
            _logger.info("registry %s reachable again after %.0fs", self.tracking_uri, down)
            self._registry_down_since = None
        self.last_poll_ok = time.time()

    def _serving_summary(self) -> str:
        model = self.default.current
        return model.uri if model is not None else "nothing yet"

    def _resolve(self, ref: ModelRef) -> tuple[bool, str | None]:
        """(reachable, version) for a registry reference; version None: not there (yet)."""
        client = self._client
        if ref.kind == "alias":
            ok, mv = self._registry_call(
                f"alias {ref.name}@{ref.alias}",
                lambda: client.get_model_version_by_alias(ref.name, ref.alias),
            )
            return ok, (str(mv.version) if mv is not None else None)
        if ref.kind == "version":
            ok, mv = self._registry_call(
                f"version {ref.name}/{ref.version}",
                lambda: client.get_model_version(ref.name, ref.version),
            )
            return ok, (str(mv.version) if mv is not None else None)
        if ref.kind == "latest":
            ok, versions = self._registry_call(
                f"versions of {ref.name}",
                lambda: client.search_model_versions(f"name = '{ref.name}'"),
            )
            if not versions:
                return ok, None
            return ok, str(max(int(v.version) for v in versions))
        return True, None

    def _discover(self) -> None:
        alias = self.discovery_alias
        if alias is None:
            return
        client = self._client

        challenger_alias = self.challenger_alias
        challengers: dict[str, str] = {}

        def listing() -> dict[str, str]:
            found: dict[str, str] = {}
            challengers.clear()
            token = None
            while True:
                page = client.search_registered_models(max_results=1000, page_token=token)
                for registered in page:
                    if alias in registered.aliases:
                        found[registered.name] = str(registered.aliases[alias])
                    if challenger_alias and challenger_alias in registered.aliases:
                        challengers[registered.name] = str(registered.aliases[challenger_alias])
                token = page.token
                if not token:
                    return found

        ok, found = self._registry_call("registered models listing", listing)
        if not ok or found is None:
            return
        with self._lock:
            self.discovered = found
            self.challengers = dict(challengers)
            self.discovery_ok = True
            for name in list(self._slots):
                if name not in found:
                    slot = self._slots.pop(name)
                    if slot is not self.default:
                        _logger.info("%s no longer holds @%s: dropped", name, alias)

    def poll_once(self) -> None:
        """One round: resolve the default, list the alias holders, start the loads needed."""
        default = self.default
        ref = default.ref
        reachable = True
        if ref.kind == "other":
            if default.current is None:
                self._maybe_load(default, None)
        else:
            reachable, version = self._resolve(ref)
            if reachable and version is not None:
                default.wanted_version = version
                self._maybe_load(default, version)
            elif reachable and default.current is None:
                default.last_error = f"{ref.uri} does not resolve to a model version yet"
        if not reachable:
            return  # already logged; no point waiting for a second timeout this round
        self._discover()
        with self._lock:
            named = [(s, self.discovered.get(n)) for n, s in self._slots.items()]
        for slot, version in named:
            if slot is not self.default and version is not None:
                slot.wanted_version = version
                self._maybe_load(slot, version)
        if self.challenger_alias and self.discovery_ok:
            self._follow_challenger(default)
            for slot, _ in named:
                if slot is not default:
                    self._follow_challenger(slot)

    # --- challengers ----------------------------------------------------------------------------
    def _follow_challenger(self, slot: ModelSlot) -> None:
        """Load the version holding the challenger alias beside `slot`, or drop it when the
        alias is gone or names the champion's own version."""
        name, alias = slot.ref.name, self.challenger_alias
        if name is None or alias is None or slot.ref.kind == "other":
            return
        version = self.challengers.get(name)
        champion_version = slot.wanted_version or slot.served_version
        challenger = slot.challenger
        if version is None or version == champion_version:
            if challenger is not None and challenger.wanted_version is not None:
                self._drop_challenger(slot, challenger, version)
            return
        if challenger is None:
            challenger = ModelSlot(
                f"{name}@{alias}",
                ModelRef.parse(f"models:/{name}@{alias}"),
                alias_label=alias,
                is_challenger=True,
            )
            if self._guard_factory is not None:
                challenger.guard = self._guard_factory(challenger)
            slot.challenger = challenger
        if challenger.wanted_version != version:
            challenger.wanted_version = version
            previous = challenger.current
            if previous is not None:  # an older challenger gets no more traffic while this loads
                challenger.current = None
                if previous is not slot.current:
                    previous.release()
            _logger.info(
                "%s@%s is version %s: loading it beside the champion", name, alias, version
            )
            if self._on_challenger_change is not None:
                self._on_challenger_change(slot, challenger, version)
        self._maybe_load(challenger, version)

    def _drop_challenger(self, slot: ModelSlot, challenger: ModelSlot, version: str | None) -> None:
        old = challenger.current
        challenger.current = None
        challenger.wanted_version = None
        challenger.last_error = None
        why = "is gone" if version is None else f"names the champion's version {version}"
        _logger.info(
            "%s@%s %s: challenger %s unloaded",
            slot.ref.name,
            self.challenger_alias,
            why,
            old.version if old is not None else "(none loaded)",
        )
        if self._on_challenger_change is not None:
            self._on_challenger_change(slot, challenger, None)
        if old is not None and old is not slot.current:
            old.release()

    # --- loading ----------------------------------------------------------------------------
    def _maybe_load(self, slot: ModelSlot, version: str | None) -> None:
        if slot.current is not None and slot.current.version == version:
            return
        promoted = slot.challenger.current if slot.challenger is not None else None
        if promoted is not None and version is not None and promoted.version == version:
            # The challenger was promoted: it is loaded already, so the champion takes it over
            # in one reference assignment (no download, no gap); the challenger slot drops it.
            previous = slot.current
            slot.current = promoted
            slot.last_error = None
            slot.loaded_event.set()
            _logger.info("serving %s for %s (the challenger, promoted)", promoted.uri, slot.key)
            if self._on_swap is not None:
                self._on_swap(slot, promoted)
            if previous is not None and previous is not promoted:
                previous.release()
            return
        if slot.loading is not None and not slot.loading.done():
            return
        key = version or slot.ref.uri
        failed_at = slot.failed.get(key)
        if failed_at is not None and time.monotonic() - failed_at < FAILED_RETRY_SECONDS:
            return
        slot.loading = self._loader.submit(self._load, slot, version)

    def _load(self, slot: ModelSlot, version: str | None) -> ServedModel | None:
        uri = slot.ref.concrete_uri(version)
        previous = slot.current
        if previous is not None and previous.version == version:
            return previous
        _logger.info(
            "loading %s for %s (serving: %s)",
            uri,
            slot.key,
            previous.uri if previous is not None else "nothing",
        )
        try:
            model = load_served_model(uri, slot.ref.name, version, self.download_timeout)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            slot.failed[version or slot.ref.uri] = time.monotonic()
            slot.last_error = f"loading {uri} failed: {reason}"
            _logger.error(
                "loading %s failed; %s keeps serving. Reason: %s",
                uri,
                previous.uri if previous is not None else "nothing",
                reason,
            )
            if self._on_load_failure is not None:
                self._on_load_failure(slot)
            return None
        if self._stop.is_set() or (slot.is_challenger and slot.wanted_version != version):
            model.release()  # stopping, or the challenger alias moved on while it loaded
            return None
        slot.current = model  # the atomic swap: one reference assignment
        slot.last_error = None
        slot.failed.pop(version or slot.ref.uri, None)
        slot.loaded_event.set()
        _logger.info(
            "serving %s for %s (loaded in %.2fs; fast path: %s)",
            uri,
            slot.key,
            model.load_seconds,
            f"on ({model.fast_reason})" if model.fast else f"off ({model.fast_reason})",
        )
        if self._on_swap is not None:
            self._on_swap(slot, model)
        if previous is not None:
            # In-flight requests keep their reference; files on disk are no longer needed.
            previous.release()
        return model

    # --- named models -------------------------------------------------------------------------
    def named_slot(self, name: str) -> ModelSlot | None:
        """The slot for /models/<name>/invocations; starts its load on first use."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is not None:
                return slot
            version = self.discovered.get(name)
            if version is None:
                return None
            default = self.default
            if default.ref.kind == "alias" and default.ref.name == name:
                slot = default
            else:
                alias_uri = f"models:/{name}@{self.discovery_alias}"
                slot = ModelSlot(name, ModelRef.parse(alias_uri), wanted_version=version)
            self._slots[name] = slot
        if slot is not default:
            self._maybe_load(slot, version)
        return slot

    def loaded_models(self) -> dict[str, str | None]:
        with self._lock:
            slots = list(self._slots.items())
        return {name: s.served_version for name, s in slots if s.current is not None}
