"""Large test files and the memory they cost a server: shared by the 2 GiB tests
(tests/reliability/test_large_artifacts.py, tests/e2e/test_compose.py) and the transfer tests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MIB = 1024 * 1024


def write_random_file(path: Path, mib: int, seed: int) -> str:
    """`mib` MiB of PCG64 bytes (nothing to compress or dedupe), 16 MiB at a time, never the
    whole file in memory; returns their sha256."""
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


@contextmanager
def peak_mib(probe: Callable[[], int]) -> Iterator[dict[str, float]]:
    """{'baseline', 'peak'} MiB of what `probe` returns in bytes, sampled every 0.2 s in the block."""
    figures = {"baseline": probe() / MIB}
    figures["peak"] = figures["baseline"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            figures["peak"] = max(figures["peak"], probe() / MIB)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield figures
    finally:
        stop.set()
        thread.join()
