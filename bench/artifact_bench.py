"""What a large artifact costs through the tracking server's proxy, and straight to S3 for contrast.

    python bench/artifact_bench.py --state-dir DIR              # a running `mlstack local up`
    python bench/artifact_bench.py --tracking-uri URI --container NAME   # a Compose stack

Writes a file of --size-mib pseudo-random MiB, then times, as a host client does (no
MLFLOW_ENABLE_PROXY_MULTIPART_* set): `mlflow.log_artifact` to a new run and
`mlflow.artifacts.download_artifacts` back, both through the server's proxy. Meanwhile it samples,
every 0.2 s, the resident memory of the server's processes (the `mlflow server` tree of the local
platform, or every process of --container) and, for a container, its cgroup's memory (which also
counts the files MLflow stages on the container's tmpfs /tmp). With --state-dir it then does the
same transfers with boto3 straight to the platform's S3 endpoint: what the presigned path would
cost if its URLs were reachable. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
for switch in ("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"):
    os.environ.pop(switch, None)


def write_file(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for index in range(mib):
            block = hashlib.shake_256(index.to_bytes(4, "big")).digest(MIB)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    try:
        parent = psutil.Process(root)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def container_probe(name: str) -> tuple[Callable[[], int], Callable[[], int]]:
    """(RSS of every process of the container, the container cgroup's memory.current)."""
    pid = int(
        subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Pid}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    v1 = [line.split(":", 2)[2] for line in lines if line.split(":", 2)[1] == "memory"]
    if v1:  # cgroup v1: the memory controller's own tree (usage includes tmpfs pages)
        memory = Path("/sys/fs/cgroup/memory", v1[0].lstrip("/"), "memory.usage_in_bytes")
    else:
        v2 = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        memory = Path("/sys/fs/cgroup", v2.lstrip("/"), "memory.current")
    return (lambda: tree_rss(pid)), (lambda: int(memory.read_text()))


@contextmanager
def peak(probes: dict[str, Callable[[], int]]) -> Iterator[dict[str, int]]:
    """Sample every probe every 0.2 s while the block runs; yields {name: peak bytes}."""
    peaks = {name: probe() for name, probe in probes.items()}
    baseline = dict(peaks)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for name, probe in probes.items():
                peaks[name] = max(peaks[name], probe())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        for name in probes:
            peaks[f"{name}_baseline"] = baseline[name]


def mib(n: float) -> float:
    return round(n / MIB, 1)


def timed(
    label: str, action: Callable[[], Any], probes: dict[str, Callable[[], int]], results: dict
) -> Any:
    started = time.monotonic()
    with peak(probes) as peaks:
        value = action()
    entry: dict[str, float] = {"seconds": round(time.monotonic() - started, 1)}
    entry.update(
        {f"{k}_peak_mib" if "baseline" not in k else f"{k}_mib": mib(v) for k, v in peaks.items()}
    )
    results[label] = entry
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, help="a running `mlstack local up` state dir")
    parser.add_argument("--tracking-uri", help="tracking server (Compose: http://127.0.0.1:5000)")
    parser.add_argument("--container", help="the Compose stack's mlflow container, for memory")
    parser.add_argument("--size-mib", type=int, default=600)
    args = parser.parse_args()

    env: dict[str, str] = {}
    probes: dict[str, Callable[[], int]] = {}
    if args.state_dir:
        from mlstack.local.processes import ProcessRecord
        from mlstack.local.state import read_env_file

        env = read_env_file(args.state_dir / "env")
        record = ProcessRecord.read(args.state_dir / "run" / "mlflow.pid")
        assert record is not None, "no mlflow.pid: is the platform up?"
        probes["server_rss"] = lambda: tree_rss(record.pid)
    if args.container:
        rss, cgroup = container_probe(args.container)
        probes.update(server_rss=rss, container_memory=cgroup)
    tracking_uri = args.tracking_uri or env["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri

    import mlflow

    results: dict[str, Any] = {"size_mib": args.size_mib, "tracking_uri": tracking_uri}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        source = Path(folder) / "weights.bin"
        sha256 = write_file(source, args.size_mib)
        mlflow.set_experiment("artifact-bench")
        with mlflow.start_run() as run:
            timed("proxy_upload", lambda: mlflow.log_artifact(str(source)), probes, results)
        target = Path(folder) / "down"
        target.mkdir()
        local = timed(
            "proxy_download",
            lambda: mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="weights.bin", dst_path=str(target)
            ),
            probes,
            results,
        )
        assert file_sha256(Path(local)) == sha256
        Path(local).unlink()

        if env.get("MLSTACK_S3_ENDPOINT"):
            import boto3
            from botocore.config import Config

            s3 = boto3.client(
                "s3",
                endpoint_url=env["MLSTACK_S3_ENDPOINT"],
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}),
            )
            bucket, key = env["MLSTACK_BUCKET"], "bench/weights.bin"
            timed(
                "s3_direct_upload",
                lambda: s3.upload_file(str(source), bucket, key),
                probes,
                results,
            )
            direct = target / "direct.bin"
            timed(
                "s3_direct_download",
                lambda: s3.download_file(bucket, key, str(direct)),
                probes,
                results,
            )
            assert file_sha256(direct) == sha256
            s3.delete_object(Bucket=bucket, Key=key)
        mlflow.MlflowClient().delete_run(run.info.run_id)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
