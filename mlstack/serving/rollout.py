"""Rolling out a challenger beside the champion: canary routing, shadow copies, the guard.

- **Canary**: `canary_weight` percent of requests go to the challenger (the version holding the
  challenger alias, default `@challenger`). With `sticky_header` set, the share is decided by a
  hash of that header's value instead of a coin: the same key always gets the same version (as
  long as the challenger is there and healthy). Requests without the header fall back to the coin.
- **Shadow**: `shadow_percent` percent of the requests the champion answers are also scored by
  the challenger, on a thread of its own after the champion's answer has been sent: the client
  never waits for it and never sees it. The challenger's latency and agreement are recorded
  (classes equal; numbers equal within `tolerance`, relative or absolute). A bounded queue keeps
  a slow challenger from piling up work: copies that do not fit are dropped (and counted).
- **Guard**: over a sliding window of the challenger's answers (canary and shadow), if its error
  ratio or its p99 latency exceed the limits (once the window holds `min_requests`), or if it
  fails to load, the guard trips: no more canary or shadow traffic, a log line saying why, and
  the state in `/metrics` and `/rollouts`. It never writes to the registry. It resumes when a
  new challenger version appears.

Errors of the challenger: any 5xx; in shadow, any non-2xx for a request the champion answered
with 200; in canary, a 4xx for a request the champion (asked afterwards, off the request path)
answers with 200. A client's own bad requests, which the champion refuses too, are not the
challenger's errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

_logger = logging.getLogger("mlstack.serving")

_EVALUATE_EVERY_SECONDS = 0.25


@dataclass(frozen=True)
class RolloutConfig:
    challenger_alias: str | None = None
    canary_weight: float = 0.0  # percent, 0-100
    sticky_header: bytes | None = None  # lower-case header name
    shadow_percent: float = 0.0  # percent, 0-100
    tolerance: float = 1e-6
    guard_max_error_ratio: float = 0.05
    guard_max_p99_seconds: float = 1.0
    guard_window_seconds: float = 60.0
    guard_min_requests: int = 20
    shadow_queue: int = 256
    shadow_max_cpu: float = 0.25

    @property
    def active(self) -> bool:
        return bool(self.challenger_alias) and (self.canary_weight > 0 or self.shadow_percent > 0)


def sticky_bucket(key: bytes) -> float:
    """A stable position in [0, 100) for a sticky key (same key, same place, every process)."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


@dataclass
class GuardState:
    version: str | None = None
    tripped: bool = False
    reason: str | None = None
    tripped_at: float | None = None
    load_failure: bool = False


class Guard:
    """The sliding-window guard of one challenger (event-loop and shadow threads record)."""

    def __init__(
        self,
        config: RolloutConfig,
        on_change: Callable[[Guard], None] | None = None,
        model: str = "",
    ) -> None:
        self.config = config
        self.model = model
        self.state = GuardState()
        self._samples: deque[tuple[float, bool, float]] = deque()
        self._lock = threading.Lock()
        self._next_evaluation = 0.0
        self._on_change = on_change

    @property
    def tripped(self) -> bool:
        return self.state.tripped

    def reset(self, version: str | None) -> None:
        with self._lock:
            was = self.state.tripped
            self.state = GuardState(version=version)
            self._samples.clear()
        if was:
            _logger.info("guard of %s: cleared for challenger version %s", self.model, version)
        if self._on_change is not None:
            self._on_change(self)

    def trip(self, reason: str, load_failure: bool = False) -> None:
        with self._lock:
            if self.state.tripped:
                return
            self.state.tripped = True
            self.state.reason = reason
            self.state.tripped_at = time.time()
            self.state.load_failure = load_failure
        _logger.warning(
            "guard of %s tripped for challenger version %s: %s; no traffic to it until a new "
            "challenger version appears (nothing changed in the registry)",
            self.model,
            self.state.version,
            reason,
        )
        if self._on_change is not None:
            self._on_change(self)

    def record(self, ok: bool, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, ok, seconds))
            if now < self._next_evaluation or self.state.tripped:
                return
            self._next_evaluation = now + _EVALUATE_EVERY_SECONDS
            reason = self._evaluate(now)
        if reason is not None:
            self.trip(reason)

    def _prune(self, now: float) -> None:
        horizon = now - self.config.guard_window_seconds
        samples = self._samples
        while samples and samples[0][0] < horizon:
            samples.popleft()

    def _evaluate(self, now: float) -> str | None:
        self._prune(now)
        count = len(self._samples)
        if count < self.config.guard_min_requests:
            return None
        errors = sum(1 for _, ok, _ in self._samples if not ok)
        ratio = errors / count
        if ratio > self.config.guard_max_error_ratio:
            return (
                f"error ratio {ratio:.3f} ({errors}/{count} in the last "
                f"{self.config.guard_window_seconds:g}s) above {self.config.guard_max_error_ratio:g}"
            )
        p99 = _quantile(sorted(s for _, _, s in self._samples), 0.99)
        if p99 > self.config.guard_max_p99_seconds:
            return (
                f"p99 latency {p99 * 1000:.1f} ms over {count} answers above "
                f"{self.config.guard_max_p99_seconds * 1000:g} ms"
            )
        return None

    def window(self) -> dict[str, Any]:
        with self._lock:
            self._prune(time.monotonic())
            samples = list(self._samples)
        count = len(samples)
        errors = sum(1 for _, ok, _ in samples if not ok)
        latencies = sorted(s for _, _, s in samples)
        return {
            "requests": count,
            "errors": errors,
            "error_ratio": errors / count if count else None,
            "p99_seconds": _quantile(latencies, 0.99) if latencies else None,
        }

    def describe(self) -> dict[str, Any]:
        state = self.state
        return {
            "tripped": state.tripped,
            "reason": state.reason,
            "tripped_at": state.tripped_at,
            "version": state.version,
            "window": self.window(),
        }


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# --- agreement ---------------------------------------------------------------------------------
def _values(body: bytes) -> list[Any] | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    predictions = payload.get("predictions") if type(payload) is dict else payload
    if type(payload) is dict and type(payload.get("outputs")) is list and payload["outputs"]:
        first = payload["outputs"][0]  # an Open Inference Protocol answer: its flat data
        predictions = first.get("data") if type(first) is dict else None
    if type(predictions) is not list:
        return None
    return predictions


def _same(a: Any, b: Any, tolerance: float) -> bool:
    kind_a, kind_b = type(a), type(b)
    if kind_a is bool or kind_b is bool:
        return kind_a is kind_b and a == b
    if kind_a in (int, float) and kind_b in (int, float):
        return a == b or math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if kind_a is list and kind_b is list:
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if kind_a is dict and kind_b is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k], tolerance) for k in a)
    return kind_a is kind_b and bool(a == b)


def agreement(champion_body: bytes, challenger_body: bytes, tolerance: float) -> tuple[int, int]:
    """(agreeing predictions, compared predictions) of two 200 answers; one row is one
    prediction. Answers of different lengths or shapes: every row disagrees."""
    left, right = _values(champion_body), _values(challenger_body)
    if left is None:
        return 0, 0
    if right is None or len(left) != len(right):
        return 0, len(left)
    agree = sum(1 for a, b in zip(left, right, strict=True) if _same(a, b, tolerance))
    return agree, len(left)


# --- shadow worker -----------------------------------------------------------------------------
@dataclass
class ShadowJob:
    run: Callable[[], None]
    queued_at: float = field(default_factory=time.monotonic)


class ShadowWorker:
    """One daemon thread working through a bounded queue of shadow (and canary re-check) jobs.

    It only starts a job while no request is being answered (`idle`, an event the app sets when
    its last in-flight request is done): scoring holds Python's GIL, and a shadow job running
    beside a live request would make that request wait for the GIL (up to the 5 ms switch
    interval). Gated this way, a live request waits at most for the one job that had just
    started. Under saturation the queue fills and new copies are dropped (and counted): the
    shadow takes spare capacity, never the champion's.
    """

    def __init__(
        self,
        capacity: int,
        on_drop: Callable[[], None],
        idle: threading.Event | None = None,
        max_cpu: float = 1.0,
    ) -> None:
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=capacity)
        self._on_drop = on_drop
        self._idle = idle
        # A duty cycle: after a job of d seconds, rest d * (1 - max_cpu) / max_cpu, so shadow
        # scoring takes at most this share of one core, whatever the request rate.
        self._rest_factor = (1.0 - max_cpu) / max_cpu if 0 < max_cpu < 1 else 0.0
        self._thread = threading.Thread(target=self._run, name="mlstack-shadow", daemon=True)
        self._started = False

    def submit(self, run: Callable[[], None]) -> bool:
        if not self._started:
            self._started = True
            self._thread.start()
        try:
            self._queue.put_nowait(ShadowJob(run))
            return True
        except queue.Full:
            self._on_drop()
            return False

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def _run(self) -> None:
        from mlstack.serving.fastpath import prepare_fast_path_thread

        prepare_fast_path_thread()
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._idle is not None:
                self._idle.wait()
            started = time.perf_counter()
            try:
                job.run()
            except Exception:
                _logger.exception("shadow scoring failed")
            if self._rest_factor:
                time.sleep((time.perf_counter() - started) * self._rest_factor)


def coin(percent: float) -> bool:
    return percent >= 100.0 or (percent > 0.0 and random.random() * 100.0 < percent)
