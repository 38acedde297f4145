"""What every platform operation shares: the error it reports, running a client tool, hashing,
object keys that are safe as paths, and the versions a record (manifest, summary) names."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

Say = Callable[[str], None]
CHUNK_BYTES = 1024 * 1024
COMMAND_TIMEOUT_SECONDS = 1800


class PlatformError(Exception):
    """A failure to report as is (no traceback): the command exits 1 with this message."""


def sha256_of(stream: IO[bytes]) -> tuple[str, int]:
    """(hex sha256, byte count) of everything `stream` yields."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as stream:
        return sha256_of(stream)


def check_key(key: str) -> str:
    """An object key that is also a safe relative path (no `..`, no absolute, no empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise PlatformError(f"object key {key!r} cannot be stored as a file in the archive")
    return key


def tool_major(version_line: str) -> int:
    """`pg_dump (PostgreSQL) 17.10 (Debian ...)` -> 17."""
    for word in version_line.split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    raise PlatformError(f"cannot read a PostgreSQL version from {version_line!r}")


def run_tool(
    command: list[str],
    what: str,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> bytes:
    """Run a command; its stdout (unless redirected); PlatformError naming `what` on failure."""
    try:
        result = subprocess.run(
            command,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError as error:
        raise PlatformError(f"{what}: {error.filename} not found") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise PlatformError(f"{what} failed (exit {result.returncode}):\n{detail}")
    return result.stdout or b""


def parse_rows(output: bytes) -> list[list[str]]:
    return [line.split("\t") for line in output.decode().splitlines() if line]


def mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


def mlstack_version() -> str:
    from mlstack import __version__

    return __version__


def say(line: str) -> None:
    """Progress and results, on stdout as they happen."""
    print(line, flush=True)


def reporting_errors(command: str, action: Callable[[], object]) -> int:
    """Run `action`; a PlatformError becomes `COMMAND: error: MESSAGE` on stderr and exit 1."""
    try:
        action()
    except PlatformError as error:
        print(f"{command}: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
