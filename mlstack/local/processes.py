"""Detached background processes with pid files that remember who they are.

A pid file holds the pid, when the process started and its command line, so a pid that the kernel
has since given to an unrelated process is never mistaken for ours (and never signalled).

"When it started" is the kernel's count of clock ticks since boot (`/proc/<pid>/stat`), not the
wall-clock create time: psutil derives that one from the boot time in `/proc/stat`, which the
kernel recomputes from the wall clock, so it moves when the clock is stepped or slewed (by a whole
second at a time on a VM whose clock runs fast). A platform compared wall-clock create times once:
when the boot time ticked over, every recorded process looked gone, `up` reported a healthy server
as "exited during start-up" and `down` left the processes running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
LOOPBACK = "127.0.0.1"
# Everything the platform talks to is on loopback: never send it through a proxy.
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
# Only where the ticks since boot cannot be read (no /proc, or a pid file written before they were
# recorded): wall-clock create times, which a clock change moves by up to a second or two.
CREATE_TIME_TOLERANCE_SECONDS = 2.0
PAIR_PORT_LOW = 20000


class PlatformError(Exception):
    """A failure to report to the user as is (no traceback)."""


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float  # wall clock, for people reading the file
    cmdline: list[str]
    start_ticks: int | None = None  # clock ticks since boot: the identity, where readable

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        process = psutil.Process(pid)
        return cls(
            pid=pid,
            create_time=process.create_time(),
            cmdline=process.cmdline(),
            start_ticks=start_ticks(pid),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: Path) -> ProcessRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def live_process(self) -> psutil.Process | None:
        """The running process this record describes, or None (gone, zombie, or pid reused)."""
        try:
            process = psutil.Process(self.pid)
            ticks = start_ticks(self.pid) if self.start_ticks is not None else None
            if ticks is not None:
                same = ticks == self.start_ticks
            else:
                same = abs(process.create_time() - self.create_time) < CREATE_TIME_TOLERANCE_SECONDS
            if same and process.status() != psutil.STATUS_ZOMBIE:
                return process
        except psutil.Error:
            pass
        return None


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux: `/proc/<pid>/stat`, field 22), or
    None where that cannot be read. Unlike a wall-clock time it never changes for a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) is in parentheses and may hold spaces or ")": split after
        # its last ")"; what follows starts at field 3 (state), so field 22 is index 19.
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ours, telemetry off, no proxy for loopback."""
    return {**os.environ, **TELEMETRY_OFF, **NO_PROXY, **(extra or {})}


def open_log(path: Path, title: str) -> int:
    """Open a service log for appending and stamp where this start begins; returns the fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    os.write(fd, f"\n===== {stamp} {title} =====\n".encode())
    return fd


def spawn_detached(
    command: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None
) -> ProcessRecord:
    """Start `command` in a new session, stdout/stderr appended to `log_path`."""
    fd = open_log(log_path, "start: " + " ".join(command))
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    # Detached on purpose: outlives us. Keep the Popen from warning that it is still running.
    process.returncode = 0
    return ProcessRecord.of(process.pid)


def terminate(record: ProcessRecord, timeout: float, first_signal: int = signal.SIGTERM) -> bool:
    """`first_signal` (SIGTERM) to the process (and its session's group), then SIGKILL after
    `timeout`.

    Returns False when the recorded process was not running (nothing was signalled).
    """
    process = record.live_process()
    if process is None:
        return False
    family = [process, *_children(process)]
    _signal_group_or_process(process, first_signal)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for straggler in alive:
        with contextlib.suppress(psutil.Error):
            straggler.kill()
    psutil.wait_procs(alive, timeout=5)
    return True


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _signal_group_or_process(process: psutil.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(process.pid) == process.pid:  # session leader: we started it with setsid
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port (a listener on 0.0.0.0 counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_open(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    """`count` distinct free ports on loopback (held open together so none repeats)."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
            if port not in (avoid or set()):
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def choose_free_port_pairs(
    count: int, offset: int, avoid: set[int] | None = None
) -> list[tuple[int, int]]:
    """`count` pairs (p, p + offset) of free ports, all distinct (SeaweedFS's gRPC convention)."""
    used = set(avoid or set())
    pairs: list[tuple[int, int]] = []
    rng = random.Random()
    for _ in range(count * 200):
        if len(pairs) == count:
            break
        port = rng.randrange(PAIR_PORT_LOW, 65536 - offset)
        pair = (port, port + offset)
        if used.isdisjoint(pair) and all(port_is_free(p) for p in pair):
            pairs.append(pair)
            used.update(pair)
    if len(pairs) < count:
        raise PlatformError(f"could not find {count} free port pairs (p, p+{offset}) on loopback")
    return pairs


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 3.0) -> int | None:
    """The HTTP status of GET url, or None when nothing answered."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def http_json(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The JSON object answered to GET url (raises on an error status or no answer)."""
    with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
        return dict(json.load(response))


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    still_alive: Callable[[], bool] = lambda: True,
    interval: float = 0.5,
) -> bool:
    """Poll `ready` until it is true (True), the deadline passes or the process died (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not still_alive():
            return ready()
        time.sleep(interval)
    return ready()


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""
