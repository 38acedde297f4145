"""What large artifacts cost through the tracking server's proxy, against boto3 straight to S3.

    python bench/artifact_bench.py                                  # starts its own `mlstack local up`
    python bench/artifact_bench.py --state-dir DIR                  # a running `mlstack local up`
    python bench/artifact_bench.py --tracking-uri URI --container NAME   # a running Compose stack
    python bench/artifact_bench.py --sizes-mib 10,500,2048 --json-out out.json --chart out.png
    python bench/artifact_bench.py --from-json a.json b.json        # table and chart only

Per size (MiB of pseudo-random bytes: numpy's PCG64, nothing a store could compress or dedupe),
`--repeats` rounds (sizes of `--once-from-mib` and more: one round), each round in this order:
`mlflow.log_artifact` to a run and `mlflow.artifacts.download_artifacts` back, both through the
server's proxy as a host client does (no MLFLOW_ENABLE_PROXY_MULTIPART_* set); then boto3's
`upload_file` / `download_file` (its default TransferConfig) straight to the platform's S3. Every
download is compared with the source by sha256. Natively boto3 runs here, on the platform's S3
endpoint; for Compose, whose S3 is on an internal network only, it runs in a throwaway container of
the stack's own image on the `stores` network with the file bind-mounted (the seconds are timed
inside it, without the container's start).

Meanwhile, every 0.2 s, it samples the resident memory of the tracking server's processes: the
`mlflow server` tree natively, every process of --container for Compose, plus that container's
cgroup memory (which also counts files on its tmpfs /tmp). Reports medians and p95s of seconds,
MiB/s, the throughput ratio proxy/direct, and the peak memory per transfer; writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform as host_platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
DEFAULT_CHART = Path(__file__).with_name("artifact_bench.png")
os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
for switch in ("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"):
    os.environ.pop(switch, None)
OPERATIONS = ("proxy_upload", "proxy_download", "direct_upload", "direct_download")


def write_file(path: Path, mib: int, seed: int = 13) -> str:
    """`mib` MiB of PCG64 bytes, written 16 MiB at a time (about 1 GB/s); their sha256."""
    import numpy as np

    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = mib * MIB
        while left:
            block = rng.bytes(min(left, 16 * MIB))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


# --- memory ------------------------------------------------------------------------------------


def process_tree(root: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(root)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(root: int) -> tuple[int, int]:
    """(resident bytes of a process and all its descendants, of the largest one of them)."""
    sizes = []
    for process in process_tree(root):
        with suppress(psutil.NoSuchProcess):
            sizes.append(process.memory_info().rss)
    return sum(sizes), max(sizes, default=0)


def container_pid(name: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", name))


def cgroup_memory_file(pid: int) -> Path:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.split(":", 2)[1] == "memory"]
    if v1:  # cgroup v1: the memory controller's own tree (usage includes tmpfs pages)
        return Path("/sys/fs/cgroup/memory", v1[0].lstrip("/"), "memory.usage_in_bytes")
    v2 = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    return Path("/sys/fs/cgroup", v2.lstrip("/"), "memory.current")


def memory_probes(server_pid: int, container: str | None) -> dict[str, Callable[[], int]]:
    """Named byte counters sampled during each transfer."""
    probes: dict[str, Callable[[], int]] = {
        "server_rss": lambda: tree_rss(server_pid)[0],
        "largest_process_rss": lambda: tree_rss(server_pid)[1],
    }
    if container:
        memory = cgroup_memory_file(server_pid)
        probes["container_memory"] = lambda: int(memory.read_text())
    return probes


@contextmanager
def peak(probes: dict[str, Callable[[], int]]) -> Iterator[dict[str, int]]:
    """Sample every probe every 0.2 s while the block runs; yields {name: peak bytes} and, once
    it ends, {name_baseline: the value before it began}."""
    baseline = {name: probe() for name, probe in probes.items()}
    peaks = dict(baseline)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for name, probe in probes.items():
                with suppress(Exception):
                    peaks[name] = max(peaks[name], probe())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        for name, value in baseline.items():
            peaks[f"{name}_baseline"] = value


# --- platforms ---------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 60) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def temporary_platform() -> Iterator[Path]:
    """A fresh `mlstack local up` on free ports (its default settings), brought down on exit."""
    state_dir = Path(tempfile.mkdtemp(prefix="mlstack-artifact-bench-"))
    command = [sys.executable, "-m", "mlstack", "local"]
    up = [
        "up", "--state-dir", str(state_dir), "--mlflow-port", str(free_port()),
        "--serving-port", str(free_port()), "--s3-port", str(free_port()),
    ]  # fmt: skip
    print(f"starting a platform in {state_dir} (mlstack local up) ...", file=sys.stderr)
    try:
        subprocess.run([*command, *up], check=True, timeout=600, stdout=sys.stderr)
        yield state_dir
    finally:
        down = subprocess.run(
            [*command, "down", "--state-dir", str(state_dir)], check=False, timeout=180
        )
        if down.returncode == 0:
            shutil.rmtree(state_dir, ignore_errors=True)


class Direct:
    """boto3 straight to the platform's S3: `upload(path) -> s`, `download(path) -> s`."""

    key = "bench/artifact-bench.bin"

    def upload(self, source: Path) -> float:
        raise NotImplementedError

    def download(self, target: Path) -> float:
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError


class NativeDirect(Direct):
    def __init__(self, env: dict[str, str]) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = env["MLSTACK_BUCKET"]
        self.s3 = boto3.client(
            "s3",
            endpoint_url=env["MLSTACK_S3_ENDPOINT"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def upload(self, source: Path) -> float:
        started = time.perf_counter()
        self.s3.upload_file(str(source), self.bucket, self.key)
        return time.perf_counter() - started

    def download(self, target: Path) -> float:
        started = time.perf_counter()
        self.s3.download_file(self.bucket, self.key, str(target))
        return time.perf_counter() - started

    def delete(self) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.key)


CONTAINER_CLIENT = """
import os, sys, time, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
action, bucket, key, path = sys.argv[1:5]
started = time.perf_counter()
if action == "upload":
    s3.upload_file(path, bucket, key)
elif action == "download":
    s3.download_file(bucket, key, path)
else:
    s3.delete_object(Bucket=bucket, Key=key)
print(time.perf_counter() - started)
"""


class ContainerDirect(Direct):
    """boto3 in a throwaway container of the tracking server's image, on its S3 network, with
    the tracking server's S3 settings; the bench folder bind-mounted at /bench."""

    def __init__(self, container: str, folder: Path) -> None:
        info = json.loads(docker("inspect", container))[0]
        self.image = info["Config"]["Image"]
        networks = list(info["NetworkSettings"]["Networks"])
        self.network = next((n for n in networks if n.endswith("_stores")), networks[0])
        wanted = ("AWS_", "MLFLOW_S3_")
        self.env = [e for e in info["Config"]["Env"] if e.startswith(wanted)]
        command = next(a for a in info["Config"]["Cmd"] if a.startswith("--artifacts-destination"))
        self.bucket = command.split("s3://", 1)[1].split("/", 1)[0]
        self.folder = folder
        folder.chmod(0o777)  # the image's user (uid 10001) reads and writes it

    def _run(self, action: str, path: str) -> float:
        env_args = [arg for item in self.env for arg in ("-e", item)]
        output = docker(
            "run", "--rm", "--network", self.network, "-v", f"{self.folder}:/bench",
            *env_args, "--entrypoint", "python", self.image,
            "-c", CONTAINER_CLIENT, action, self.bucket, self.key, path,
            timeout=1800,
        )  # fmt: skip
        return float(output.splitlines()[-1])

    def upload(self, source: Path) -> float:
        source.chmod(0o644)
        return self._run("upload", f"/bench/{source.relative_to(self.folder)}")

    def download(self, target: Path) -> float:
        target.parent.chmod(0o777)
        return self._run("download", f"/bench/{target.relative_to(self.folder)}")

    def delete(self) -> None:
        self._run("delete", "-")


# --- the measurement ---------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 2), "p95": round(p95, 2)}


def measure_size(
    size_mib: int,
    rounds: int,
    folder: Path,
    direct: Direct,
    probes: dict[str, Callable[[], int]],
    experiment_id: str,
) -> dict[str, Any]:
    import mlflow

    client = mlflow.MlflowClient()
    source = folder / f"weights-{size_mib}.bin"
    sha256 = write_file(source, size_mib, seed=size_mib)
    seconds: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    memory: dict[str, dict[str, float]] = {}

    def timed(op: str, action: Callable[[], float | None]) -> None:
        started = time.perf_counter()
        with peak(probes) as peaks:
            inner = action()
        seconds[op].append(inner if inner is not None else time.perf_counter() - started)
        entry = memory.setdefault(op, {})
        for name in probes:  # worst round's peak, and its rise over the round's baseline
            entry[f"{name}_peak_mib"] = max(entry.get(f"{name}_peak_mib", 0), peaks[name] / MIB)
            rise = (peaks[name] - peaks[f"{name}_baseline"]) / MIB
            entry[f"{name}_rise_mib"] = max(entry.get(f"{name}_rise_mib", 0), rise)

    def one_round(round_: int) -> None:
        run_id = client.create_run(experiment_id).info.run_id
        target = folder / f"proxy-{round_}"
        target.mkdir()
        timed("proxy_upload", lambda: client.log_artifact(run_id, str(source)))
        local: list[str] = []
        timed(
            "proxy_download",
            lambda: local.append(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=source.name, dst_path=str(target)
                )
            ),
        )
        if file_sha256(Path(local[0])) != sha256:
            raise SystemExit(f"{size_mib} MiB: the proxy's download differs from the source")
        shutil.rmtree(target)
        client.delete_run(run_id)  # `mlstack gc` / `mlflow gc` may reclaim its artifacts

        direct_target = folder / f"direct-{round_}" / "weights.bin"
        direct_target.parent.mkdir()
        timed("direct_upload", lambda: direct.upload(source))
        timed("direct_download", lambda: direct.download(direct_target))
        if file_sha256(direct_target) != sha256:
            raise SystemExit(f"{size_mib} MiB: boto3's download differs from the source")
        shutil.rmtree(direct_target.parent)
        direct.delete()

    try:
        for round_ in range(rounds):
            one_round(round_)
    finally:
        source.unlink(missing_ok=True)

    cell: dict[str, Any] = {"size_mib": size_mib, "rounds": rounds, "sha256_identical": True}
    for op in OPERATIONS:
        speeds = [size_mib / s for s in seconds[op]]
        cell[op] = {
            "seconds": [round(s, 2) for s in seconds[op]],
            "seconds_summary": summary(seconds[op]),
            "mib_per_s_median": round(statistics.median(speeds), 1),
            "memory": {k: round(v, 1) for k, v in memory[op].items()},
        }
    for way in ("upload", "download"):  # throughput ratio: direct seconds / proxy seconds
        proxy = cell[f"proxy_{way}"]["seconds_summary"]["median"]
        direct_s = cell[f"direct_{way}"]["seconds_summary"]["median"]
        cell[f"ratio_{way}"] = round(direct_s / proxy, 2) if proxy else None
    return cell


def machine_context(label: str, tracking_uri: str) -> dict[str, Any]:
    import mlflow

    return {
        "platform": label,
        "tracking_uri": tracking_uri,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": host_platform.python_version(),
        "mlflow": mlflow.__version__,
    }


def bench(args: argparse.Namespace, state_dir: Path | None) -> dict[str, Any]:
    env: dict[str, str] = {}
    if state_dir is not None:
        from mlstack.local.processes import ProcessRecord
        from mlstack.local.state import read_env_file

        env = read_env_file(state_dir / "env")
        record = ProcessRecord.read(state_dir / "run" / "mlflow.pid")
        if record is None:
            raise SystemExit(f"no mlflow.pid in {state_dir}/run: is the platform up?")
        server_pid = record.pid
    else:
        server_pid = container_pid(args.container)
    tracking_uri = args.tracking_uri or env["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import mlflow

    label = "Compose" if args.container else "native"
    results: dict[str, Any] = {"context": machine_context(label, tracking_uri), "cells": []}
    probes = memory_probes(server_pid, args.container)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("artifact-bench")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("artifact-bench")
    )
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="artifact-bench-") as name:
        folder = Path(name)
        direct = ContainerDirect(args.container, folder) if args.container else NativeDirect(env)
        for size in args.sizes_mib:
            rounds = 1 if size >= args.once_from_mib else args.repeats
            print(f"{label}: {size} MiB x {rounds} ...", file=sys.stderr, flush=True)
            results["cells"].append(
                measure_size(size, rounds, folder, direct, probes, experiment_id)
            )
    results["context"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    return results


# --- report ------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| platform | MiB | rounds | proxy up s (MiB/s) | direct up s (MiB/s) | up ratio "
        "| proxy down s (MiB/s) | direct down s (MiB/s) | down ratio "
        "| server RSS peak up / down MiB (largest process) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for cell in result["cells"]:

            def fmt(op: str, cell: dict[str, Any] = cell) -> str:
                s = cell[op]["seconds_summary"]
                p95 = f", p95 {s['p95']}" if cell["rounds"] > 1 else ""
                return f"{s['median']}{p95} ({cell[op]['mib_per_s_median']})"

            def rss(op: str, cell: dict[str, Any] = cell) -> str:
                m = cell[op]["memory"]
                text = f"{m['server_rss_peak_mib']:.0f} ({m['largest_process_rss_peak_mib']:.0f})"
                if "container_memory_peak_mib" in m:
                    text += f", cgroup +{m['container_memory_rise_mib']:.0f}"
                return text

            lines.append(
                f"| {result['context']['platform']} | {cell['size_mib']} | {cell['rounds']} "
                f"| {fmt('proxy_upload')} | {fmt('direct_upload')} | {cell['ratio_upload']}x "
                f"| {fmt('proxy_download')} | {fmt('direct_download')} | "
                f"{cell['ratio_download']}x | {rss('proxy_upload')} / {rss('proxy_download')} |"
            )
    return "\n".join(lines)


def write_chart(results: list[dict[str, Any]], path: Path) -> None:
    """Top: throughput (MiB/s, median) proxy beside direct, up and down, per platform and size,
    with the ratio above; bottom: the tracking server's peak RSS during each proxied transfer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = [(r["context"]["platform"], c) for r in results for c in r["cells"]]
    labels = [f"{p}\n{c['size_mib']} MiB" for p, c in cells]
    x = np.arange(len(cells))
    width = 0.2
    fig, (speed_ax, rss_ax) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    bars = (
        ("proxy_upload", "upload, proxy", "#1f77b4"),
        ("direct_upload", "upload, boto3 direct", "#aec7e8"),
        ("proxy_download", "download, proxy", "#d62728"),
        ("direct_download", "download, boto3 direct", "#ff9896"),
    )
    for i, (op, name, color) in enumerate(bars):
        values = [c[op]["mib_per_s_median"] for _, c in cells]
        drawn = speed_ax.bar(x + (i - 1.5) * width, values, width, label=name, color=color)
        speed_ax.bar_label(drawn, labels=[f"{v:.0f}" for v in values], fontsize=7, padding=1)
    for i, (_, cell) in enumerate(cells):
        speed_ax.annotate(
            f"up {cell['ratio_upload']}x / down {cell['ratio_download']}x",
            (x[i], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -12),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            fontweight="bold",
        )
    speed_ax.axhline(0, color="black", linewidth=0.5)
    speed_ax.set_title(
        "throughput, MiB/s (median; bold: proxy / direct, target >= 0.6x)", loc="left", fontsize=10
    )
    speed_ax.margins(y=0.2)
    speed_ax.legend(fontsize=8, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.02))
    memory_bars = (
        ("proxy_upload", "server_rss", "upload: all server processes", "#1f77b4"),
        ("proxy_upload", "largest_process_rss", "upload: largest process", "#aec7e8"),
        ("proxy_download", "server_rss", "download: all server processes", "#d62728"),
        ("proxy_download", "largest_process_rss", "download: largest process", "#ff9896"),
    )
    for i, (op, probe, name, color) in enumerate(memory_bars):
        values = [c[op]["memory"][f"{probe}_peak_mib"] for _, c in cells]
        drawn = rss_ax.bar(x + (i - 1.5) * width, values, width, label=name, color=color)
        rss_ax.bar_label(drawn, labels=[f"{v:.0f}" for v in values], fontsize=7, padding=1)
    rss_ax.axhline(500 * 1e6 / MIB, color="black", linestyle="--", linewidth=0.8, label="500 MB")
    rss_ax.set_title(
        "tracking server's resident memory, peak during the proxied transfer, MiB",
        loc="left",
        fontsize=10,
    )
    rss_ax.legend(fontsize=7.5, ncol=3, loc="upper left")
    rss_ax.margins(y=0.4)
    rss_ax.set_xticks(x, labels, fontsize=8.5)
    context = results[0]["context"]
    loads = ", ".join(
        f"{r['context']['platform']} {r['context']['load_average_at_start']}-"
        f"{r['context'].get('load_average_at_end')}"
        for r in results
    )
    fig.suptitle("Artifacts through the tracking server's proxy vs boto3 straight to S3")
    fig.text(
        0.5,
        0.005,
        f"{context['date']}: {context['cpus']} CPUs shared with other work, load average {loads}; "
        f"Python {context['python']}, MLflow {context['mlflow']}. Compare ratios, not absolutes.",
        ha="center",
        fontsize=8,
        color="#444444",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}", file=sys.stderr)


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("a comma-separated list of positive MiB, e.g. 10,500")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, help="a running `mlstack local up` state dir")
    parser.add_argument("--tracking-uri", help="Compose: the tracking server, with --container")
    parser.add_argument("--container", help="Compose: the stack's mlflow container")
    parser.add_argument("--sizes-mib", type=sizes, default=[10, 500, 2048], help="10,500,2048")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per size (default 3)")
    parser.add_argument(
        "--once-from-mib", type=int, default=1024, help="sizes from this one get one round"
    )
    parser.add_argument("--tmp-dir", help="where the files go (default: the system's temp dir)")
    parser.add_argument("--json-out", type=Path, help="write the results here")
    parser.add_argument("--chart", type=Path, help=f"write a PNG here (e.g. {DEFAULT_CHART})")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", help="only print the table and draw the chart"
    )
    args = parser.parse_args()
    if bool(args.container) != bool(args.tracking_uri) and not args.from_json:
        parser.error("--tracking-uri and --container go together (a Compose stack)")

    if args.from_json:
        results = [json.loads(path.read_text()) for path in args.from_json]
    else:
        if args.container:
            result = bench(args, None)
        elif args.state_dir:
            result = bench(args, args.state_dir)
        else:
            with temporary_platform() as state_dir:
                result = bench(args, state_dir)
        results = [result]
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(results))
    if args.chart:
        write_chart(results, args.chart)


if __name__ == "__main__":
    main()
