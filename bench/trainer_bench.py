"""Benchmark: a trainer's wall time against the plainest stock MLflow script doing the same job.

    python bench/trainer_bench.py                        # native: starts a platform (mlstack local up)
    python bench/trainer_bench.py --tracking-uri URI     # native, against a running tracking server
    python bench/trainer_bench.py --modes compose        # the running compose stack (docker compose run)
    python bench/trainer_bench.py --modes native compose --pairs 7 --json-out results.json
    python bench/trainer_bench.py --from-json bench/trainer_bench.json   # redraw; runs nothing

Per mode it runs, alternately, `--pairs` times each (after one discarded warm-up pair):
- ours:  `python logistic_model/train.py` natively, or `docker compose run --rm
  logistic_model_trainer` in Compose;
- plain: `bench/plain_logistic_train.py` (breast cancer, scaled logistic regression, `log_param` and
  `log_metric` per value, `mlflow.sklearn.log_model` with a signature and `registered_model_name`),
  natively with the same Python, or in Compose in the same trainer image (`docker compose run --rm
  --entrypoint python` with the script bind-mounted read-only).
Each is timed from start to exit, and must exit 0. It prints the median and the spread of each,
and the ratio of the medians (ours / plain), against the targets (0.4 natively, 0.5 in Compose),
and draws a chart (`--chart`, default bench/trainer_bench.png).

Compose mode uses the project and files your `docker compose` would (COMPOSE_FILE,
COMPOSE_PROJECT_NAME), with the stack already up (`docker compose up -d --wait`).

Not a test: timings on a shared 2-core machine are noisy; the ratio is what counts, and both sides
of each pair run under the same load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform as host_platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serving_bench import platform  # the same temporary platform; bench/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
PLAIN = ROOT / "bench" / "plain_logistic_train.py"
TARGETS = {"native": 0.4, "compose": 0.5}
TRAINER = "logistic_model_trainer"


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds from start to exit; a failed run stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
            f"\n--- stderr\n{done.stderr[-3000:]}"
        )
    return seconds


def commands(mode: str) -> dict[str, list[str]]:
    if mode == "native":
        return {
            "ours": [sys.executable, "logistic_model/train.py"],
            "plain": [sys.executable, str(PLAIN)],
        }
    run = ["docker", "compose", "run", "--rm", "--no-deps"]
    return {
        "ours": [*run, TRAINER],
        "plain": [
            *run, "-v", f"{PLAIN}:/tmp/plain_logistic_train.py:ro", "--entrypoint", "python",
            TRAINER, "/tmp/plain_logistic_train.py",
        ],
    }  # fmt: skip


def run_pairs(mode: str, env: dict[str, str], pairs: int) -> dict[str, Any]:
    cmds = commands(mode)
    samples: dict[str, list[float]] = {"ours": [], "plain": []}
    print(f"[{mode}] warm-up pair (discarded) ...", flush=True)
    for kind in ("ours", "plain"):
        timed(cmds[kind], env)
    for index in range(1, pairs + 1):
        # alternate which goes first, so neither always follows the other's cache effects
        order = ("ours", "plain") if index % 2 else ("plain", "ours")
        for kind in order:
            samples[kind].append(timed(cmds[kind], env))
        print(
            f"[{mode}] pair {index}/{pairs}: ours {samples['ours'][-1]:.2f} s, "
            f"plain {samples['plain'][-1]:.2f} s (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    return {
        "mode": mode,
        "samples": samples,
        "median_s": medians,
        "ratio": medians["ours"] / medians["plain"],
        "target": TARGETS[mode],
    }


def machine_context(pairs: int) -> dict[str, Any]:
    import mlflow
    import sklearn

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": host_platform.python_version(),
        "mlflow": mlflow.__version__,
        "scikit_learn": sklearn.__version__,
        "pairs": pairs,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'mode':8} {'ours median':>12} {'plain median':>13} {'ratio':>7} {'target':>7}")
    for r in results:
        met = "met" if r["ratio"] <= r["target"] else "NOT met"
        spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in r["samples"].items()}
        print(
            f"{r['mode']:8} {r['median_s']['ours']:11.2f}s {r['median_s']['plain']:12.2f}s "
            f"{r['ratio']:6.2f}x {r['target']:6.2f}x  {met}  "
            f"(ours {spread['ours']} s, plain {spread['plain']} s)"
        )


def write_chart(results: list[dict[str, Any]], context: dict[str, Any], path: Path) -> None:
    """Median wall time per mode, ours beside plain, every sample as a dot, the ratio on top."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 + 2.4 * len(results), 4.6))
    ax = fig.subplots()
    width = 0.36
    colours = {"plain": "#9e9e9e", "ours": "#1f77b4"}
    labels = {"plain": "plain stock MLflow script", "ours": "mlstack trainer"}
    for i, result in enumerate(results):
        for offset, kind in ((-width / 2, "plain"), (width / 2, "ours")):
            ax.bar(
                i + offset,
                result["median_s"][kind],
                width,
                color=colours[kind],
                label=labels[kind] if i == 0 else None,
            )
            values = result["samples"][kind]
            ax.scatter([i + offset] * len(values), values, s=10, color="black", zorder=3)
        top = max(max(result["samples"]["plain"]), max(result["samples"]["ours"]))
        met = "target met" if result["ratio"] <= result["target"] else "target NOT met"
        ax.annotate(
            f"{result['ratio']:.2f}x (target {result['target']}x: {met})",
            (i, top * 1.04),
            ha="center",
            fontsize=9,
        )
    ax.set_xticks(range(len(results)), [f"{r['mode']}" for r in results])
    ax.set_ylabel("wall time per run, s (median; dots: each run)")
    ax.set_ylim(0, max(max(max(r["samples"][k]) for k in ("plain", "ours")) for r in results) * 1.2)
    ax.set_title("Train, log, register logistic_model: mlstack vs a plain MLflow script")
    ax.legend(loc="lower right", fontsize=8)
    fig.text(
        0.01,
        0.01,
        f"{context['date']}, {context['cpus']} cores, load {context['load_average_at_start']} at "
        f"start; Python {context['python']}, MLflow {context['mlflow']}, scikit-learn "
        f"{context['scikit_learn']}; {context['pairs']} pairs per mode",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=("native", "compose"), default=["native"])
    parser.add_argument("--pairs", type=int, default=5, help="timed pairs per mode (at least 5)")
    parser.add_argument("--tracking-uri", help="native mode: a running server (default: start one)")
    parser.add_argument("--json-out", type=Path, help="also write the results here")
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "trainer_bench.png")
    parser.add_argument("--from-json", type=Path, help="redraw table and chart from a --json-out")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print_table(saved["results"])
        write_chart(saved["results"], saved["context"], args.chart)
        return
    if args.pairs < 5:
        parser.error("--pairs: at least 5 pairs make a median worth stating")

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    context = machine_context(args.pairs)
    results = []
    for mode in args.modes:
        if mode == "native":
            # The platform `mlstack local up` starts by default: two MLflow server workers.
            with platform(args, env, workers=2) as uri:
                results.append(run_pairs(mode, {**env, "MLFLOW_TRACKING_URI": uri}, args.pairs))
        else:
            results.append(run_pairs(mode, env, args.pairs))
    context["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print_table(results)
    if args.json_out:
        args.json_out.write_text(json.dumps({"context": context, "results": results}, indent=2))
    write_chart(results, context, args.chart)


if __name__ == "__main__":
    main()
