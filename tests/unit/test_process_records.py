"""A pid file's record recognises its process across wall-clock changes, and only its process.

psutil's wall-clock create time is the process's ticks since boot plus the boot time in
/proc/stat, which the kernel derives from the wall clock: on a VM whose clock runs fast it ticks
over by a whole second now and then. CI saw that: the local platform's `up` called a healthy
MLflow server "exited during start-up" and `down` left processes running. Here a real child
process is recorded, then the boot time psutil reads is moved as the kernel moves it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mlstack.local import processes
from mlstack.local.processes import ProcessRecord, start_ticks, terminate

pytestmark = pytest.mark.unit


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def boot_time_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on psutil reads a boot time one second later, as after the kernel's tick-over."""
    from psutil import _pslinux  # the local platform runs on Linux

    real = _pslinux.boot_time
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real() + 1.0)


def test_start_ticks_are_read_for_a_live_process(child: subprocess.Popen[bytes]) -> None:
    ticks = start_ticks(child.pid)
    assert ticks is not None and ticks > 0
    assert start_ticks(child.pid) == ticks  # it never changes for a process


def test_the_record_still_knows_its_process_after_the_boot_time_moves(
    child: subprocess.Popen[bytes], boot_time_moves: None
) -> None:
    record = dataclasses.replace(
        ProcessRecord.of(child.pid),
        create_time=psutil.Process(child.pid).create_time() - 1.0,  # written before the move
    )
    process = record.live_process()
    assert process is not None and process.pid == child.pid
    assert terminate(record, timeout=10) is True  # `down` stops it
    assert child.wait(timeout=10) is not None


def test_a_pid_given_to_another_process_is_not_ours(child: subprocess.Popen[bytes]) -> None:
    record = ProcessRecord.of(child.pid)
    assert record.start_ticks is not None
    reused = dataclasses.replace(record, start_ticks=record.start_ticks - 100)
    assert reused.live_process() is None
    assert terminate(reused, timeout=1) is False  # never signalled
    assert child.poll() is None


def test_a_record_written_before_start_ticks_falls_back_to_the_create_time(
    child: subprocess.Popen[bytes],
) -> None:
    record = dataclasses.replace(ProcessRecord.of(child.pid), start_ticks=None)
    assert record.live_process() is not None
    stale = dataclasses.replace(
        record, create_time=record.create_time - 10 * processes.CREATE_TIME_TOLERANCE_SECONDS
    )
    assert stale.live_process() is None


def test_a_record_reads_back_from_its_pid_file(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    path = tmp_path / "serving.pid"
    record = ProcessRecord.of(child.pid)
    record.write(path)
    assert ProcessRecord.read(path) == record
