"""In-process: the CPU one request costs through the whole serving app, plain against each
rollout feature, interleaved call by call.

    python bench/serving_cost_bench.py                  # about 3 minutes: a temporary platform
    python bench/serving_cost_bench.py --calls 40000 --json-out bench/serving_cost.json \\
        --chart bench/serving_cost.png

Why this exists beside `serving_bench.py --suite rollouts`: over HTTP, two `mlstack serve`
processes with identical settings differ by up to +-25 % in requests/s on these shared 2-core
machines (the suite's A/A control), in whichever direction, whatever the order of measurement.
A 5 % target (canary, bearer token) is below that floor. Here every variant is a `ServingApp`
(the ASGI application uvicorn runs, built from the same settings `mlstack serve` reads) in this
one process, loaded from the same registry, and each call is timed with the thread's CPU clock,
the variants taking turns call by call, so a burst of other work on the machine, and whatever
makes one process faster than another, hits all of them alike. The A/A pair (two plain apps)
shows what is left of the noise.

What a call covers: everything the app does with a request, from the ASGI scope to the last
`send` (auth check, routing, the canary's pick, reading the body, scoring on the fast path, the
response, the per-version metrics and the guard's record). What it leaves out is uvicorn's HTTP
parsing and socket work, the same for every variant, so the end-to-end throughput ratio of a
CPU-bound server lies between the ratio shown here and 1.

The throughput ratio is plain's mean CPU per request over the variant's (the server answers
requests/s = 1 / CPU per request when it is the bottleneck); medians are shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_bench import (  # the bench's own helpers, not the test suite's
    TELEMETRY_OFF,
    platform,
    register_challenger,
    register_models,
    v2_body,
)

DEFAULT_CHART = Path(__file__).resolve().parent / "serving_cost.png"
TOKEN = "bench-token-0123456789abcdef0123"

# label -> (environment `mlstack serve` would get, target throughput ratio or None, what)
VARIANTS: dict[str, tuple[dict[str, str], float | None, str]] = {
    "plain": ({"MLSTACK_SERVE_CHALLENGER_ALIAS": ""}, None, "/invocations, no challenger"),
    "plain again": (
        {"MLSTACK_SERVE_CHALLENGER_ALIAS": ""},
        None,
        "A/A control: a second plain app",
    ),
    "canary 10 %": ({"MLSTACK_CANARY_WEIGHT": "10"}, 0.95, "@challenger gets 10 %"),
    "bearer token": (
        {"MLSTACK_SERVE_CHALLENGER_ALIAS": "", "MLSTACK_SERVE_TOKENS_FILE": "<tokens>"},
        0.95,
        "Authorization: Bearer, checked in constant time",
    ),
    "v2 /infer": ({"MLSTACK_SERVE_CHALLENGER_ALIAS": ""}, 0.9, "the same row as a v2 tensor"),
}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_app(extra: dict[str, str], model_name: str, tracking_uri: str) -> Any:
    """A ServingApp from the settings `mlstack serve` would read with this environment, started
    (its registry follower loads the champion, and the challenger if it has one)."""
    from mlstack.serving.app import ServeConfig, ServingApp, configure_process
    from mlstack.settings import Settings

    values = {
        **extra,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLSTACK_SERVE_MODEL": model_name,
        "MLSTACK_POLL_INTERVAL_SECONDS": "30",
    }
    with environment(values):
        settings = Settings()
        configure_process(settings)
        app = ServingApp(ServeConfig.from_settings(settings))
    app.follower.start()
    return app


def wait_ready(app: Any, name: str, challenger: bool, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = json.loads(app._rollouts_answer().body)["models"].get(name) or {}
        champion_ready = app.follower.default.current is not None
        if champion_ready and (
            not challenger or (state.get("challenger") or {}).get("state") == "serving"
        ):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{name}: the app never got ready (challenger: {challenger})")


def scope_for(path: str, body: bytes, token: bool) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:5001"),
        (b"user-agent", b"wrk"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if token:
        headers.append((b"authorization", f"Bearer {TOKEN}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5001),
    }


async def call(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    """One request through the app; its status and body."""
    message = {"type": "http.request", "body": body, "more_body": False}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


async def measure(
    plans: dict[str, tuple[Any, dict[str, Any], bytes]], calls: int, warmup: int
) -> dict[str, list[int]]:
    """CPU ns per call, the variants taking turns; the order rotates every round so that no
    variant always follows the same one."""
    names = list(plans)
    clock = time.thread_time_ns
    samples: dict[str, list[int]] = {name: [] for name in names}
    for round_ in range(warmup + calls):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            app, scope, body = plans[name]
            started = clock()
            status, _ = await call(app, scope, body)
            spent = clock() - started
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}")
            if round_ >= warmup:
                samples[name].append(spent)
    return samples


def write_chart(results: dict[str, dict[str, Any]], context: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = list(results)
    means = [results[n]["mean_us"] for n in names]
    figure = Figure(figsize=(9, 4.8), layout="constrained")
    axes = figure.subplots()
    colors = ["#7f7f7f" if n.startswith("plain") else "#1f77b4" for n in names]
    bars = axes.bar(names, means, color=colors)
    for bar, name in zip(bars, names, strict=True):
        result = results[name]
        label = f"{result['mean_us']:.0f} µs\n{result['throughput_ratio']:.3f}x"
        if result["target"] is not None:
            label += f"\n(target ≥{result['target']:.2f}x)"
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=9)  # fmt: skip
    axes.set_ylim(0, max(means) * 1.35)
    axes.set_ylabel("mean CPU per request through the app (µs)")
    axes.set_title(
        "mlstack serve: what each rollout feature costs per request, in one process\n"
        f"{context['calls_per_variant']} calls each, interleaved; load average "
        f"{context['load_average_at_start']}, {context['cpus']} CPUs, {context['date']}",
        fontsize=10,
    )
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per variant")
    parser.add_argument("--warmup", type=int, default=1000, help="calls per variant first")
    parser.add_argument("--tracking-uri", help="a running registry (default: start a platform)")
    parser.add_argument("--prefix", default="bench_cost_", help="registered model name prefix")
    parser.add_argument("--json-out", help="also write the results here")
    parser.add_argument("--chart", default=str(DEFAULT_CHART), help="PNG to write")
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)

    tokens = Path(tempfile.mkdtemp(prefix="mlstack-bench-tokens-")) / "tokens"
    tokens.write_text(TOKEN + "\n")
    load_at_start = round(os.getloadavg()[0], 2)
    with platform(args, {**os.environ}) as tracking_uri:
        model = {m.key: m for m in register_models(tracking_uri, args.prefix)}["logreg"]
        challenger = register_challenger(tracking_uri, model)
        print(f"{model.name}: champion {model.version}, challenger {challenger}", flush=True)
        body = model.payloads[1]
        plans: dict[str, tuple[Any, dict[str, Any], bytes]] = {}
        apps = []
        try:
            for label, (extra, _target, _what) in VARIANTS.items():
                extra = {k: v.replace("<tokens>", str(tokens)) for k, v in extra.items()}
                app = build_app(extra, model.name, tracking_uri)
                apps.append(app)
                wait_ready(app, model.name, challenger="MLSTACK_CANARY_WEIGHT" in extra)
                if label == "v2 /infer":
                    v2 = v2_body(body)
                    plans[label] = (app, scope_for(f"/v2/models/{model.name}/infer", v2, False), v2)
                else:
                    token = "MLSTACK_SERVE_TOKENS_FILE" in extra
                    plans[label] = (app, scope_for("/invocations", body, token), body)
            samples = asyncio.run(measure(plans, args.calls, args.warmup))
            served = canary_share(apps[list(VARIANTS).index("canary 10 %")], model.name)
        finally:
            for app in apps:
                app.follower.stop()
                app.shadow.stop()

    base = statistics.fmean(samples["plain"])
    results: dict[str, dict[str, Any]] = {}
    print(f"\n{'variant':16} {'mean CPU us':>11} {'median':>8} {'throughput ratio':>17} target")
    for label, values in samples.items():
        mean = statistics.fmean(values)
        target = VARIANTS[label][1]
        ratio = base / mean
        results[label] = {
            "what": VARIANTS[label][2],
            "mean_us": round(mean / 1000, 2),
            "median_us": round(statistics.median(values) / 1000, 2),
            "p99_us": round(statistics.quantiles(values, n=100)[98] / 1000, 2),
            "throughput_ratio": round(ratio, 3),
            "target": target,
            "met": None if target is None else ratio >= target,
        }
        verdict = (
            "" if target is None else f">={target:.2f}x {'met' if ratio >= target else 'MISSED'}"
        )
        print(
            f"{label:16} {mean / 1000:11.1f} {statistics.median(values) / 1000:8.1f} "
            f"{ratio:16.3f}x {verdict}"
        )
    print(f"canary: the challenger answered {served:.1%} of the canary app's requests")
    context = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "calls_per_variant": args.calls,
        "canary_challenger_share": round(served, 4),
    }
    print(
        f"load average {load_at_start} -> {context['load_average_at_end']} ({context['cpus']} CPUs)"
    )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"context": context, "variants": results}, indent=2) + "\n"
        )
    write_chart(results, context, Path(args.chart))
    print(f"chart: {args.chart}")


def canary_share(app: Any, name: str) -> float:
    """The share of the canary app's live answers the challenger gave (its /metrics)."""
    live: dict[str, float] = {}
    for line in app.metrics.render()[0].decode().splitlines():
        if line.startswith("mlstack_serving_model_requests_total{") and 'mode="live"' in line:
            alias = line.split('alias="', 1)[1].split('"', 1)[0]
            live[alias] = live.get(alias, 0.0) + float(line.rsplit(" ", 1)[1])
    total = sum(live.values())
    return live.get("challenger", 0.0) / total if total else float("nan")


if __name__ == "__main__":
    main()
