"""In-process: the CPU one request's scoring costs on `/invocations`' fast path and on v2 `/infer`.

    python bench/v2_scoring_bench.py                    # about a minute; no platform, no server
    python bench/v2_scoring_bench.py --calls 50000 --json-out results.json

The same logistic regression (breast cancer, 30 columns, saved and loaded the way `mlstack serve`
loads it) and the same row, as a `dataframe_split` body for `/invocations` and as one FP64 tensor
for v2. Per call: body bytes -> JSON answer bytes, i.e. what each route does between reading the
body and sending the answer (parse, array, predict, encode), measured with the thread's CPU clock.
The three variants run interleaved call by call, so a burst of other work on the machine hits all
of them alike; that is why this measurement holds on a loaded machine where the end-to-end
throughput ratio of `serving_bench.py --suite rollouts` swings by +-30 %. Variants: the fast path
of `/invocations`, v2 through the general parser (`request_rows` + `predict_fast`, what every v2
request took before the lane), and v2 now (`fast_lane_array`).

Not a test, and not the end-to-end figure: HTTP parsing, routing and metrics come on top of both
routes alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per variant")
    parser.add_argument("--json-out", help="also write the results here")
    args = parser.parse_args()

    import mlflow
    import orjson
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from mlstack.serving import v2
    from mlstack.serving.fastpath import prepare_fast_path_thread
    from mlstack.serving.model import load_served_model

    features, target = load_breast_cancer(return_X_y=True, as_frame=True)
    estimator = LogisticRegression(max_iter=5000).fit(features, target)
    path = str(Path(tempfile.mkdtemp(prefix="v2-bench-")) / "model")
    signature = infer_signature(features, estimator.predict(features))
    mlflow.sklearn.save_model(estimator, path, signature=signature, input_example=features.iloc[:3])
    model = load_served_model(path, "bench", "1")
    assert model.fast is not None, model.fast_reason
    fast = model.fast
    prepare_fast_path_thread()
    rows = features.sample(1, random_state=1).values.tolist()
    split = {"columns": list(features.columns), "data": rows}
    invocations_body = orjson.dumps({"dataframe_split": split})
    tensor = {"name": "input-0", "shape": [1, 30], "datatype": "FP64", "data": rows}
    v2_body = orjson.dumps({"inputs": [tensor]})

    def v2_general(body: bytes) -> bytes:
        payload = orjson.loads(body)
        parsed, _ = v2.request_rows(payload, model)
        predictions = v2.predict_fast(model, parsed)
        return v2.response_body("bench", "1", payload.get("id"), predictions)

    def v2_lane(body: bytes) -> bytes:
        payload = orjson.loads(body)
        array = v2.fast_lane_array(payload, model)
        assert array is not None
        predictions = fast.predict_array(array)
        return v2.response_body("bench", "1", payload.get("id"), predictions)

    variants = {
        "/invocations (fast path)": (fast.try_predict, invocations_body),
        "v2 /infer, general parser": (v2_general, v2_body),
        "v2 /infer, lane": (v2_lane, v2_body),
    }
    answers = {name: fn(body) for name, (fn, body) in variants.items()}
    assert answers["v2 /infer, general parser"] == answers["v2 /infer, lane"]
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(500):  # warm-up
        for fn, body in variants.values():
            fn(body)
    clock = time.thread_time_ns
    for _ in range(args.calls):
        for name, (fn, body) in variants.items():
            started = clock()
            fn(body)
            samples[name].append(clock() - started)
    base = statistics.median(samples["/invocations (fast path)"])
    results = {}
    print(f"{'variant':28} {'median CPU us':>13} {'mean':>8} {'invocations / variant':>22}")
    for name, values in samples.items():
        median = statistics.median(values)
        results[name] = {
            "median_us": round(median / 1000, 1),
            "mean_us": round(statistics.fmean(values) / 1000, 1),
            "invocations_over_variant": round(base / median, 3),
        }
        print(
            f"{name:28} {median / 1000:13.1f} {statistics.fmean(values) / 1000:8.1f} "
            f"{base / median:21.2f}x"
        )
    context = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "calls_per_variant": args.calls,
    }
    print(f"load average {context['load_average']} ({context['cpus']} CPUs)")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"context": context, "variants": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
