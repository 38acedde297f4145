"""What every local service provides to the platform: start, health, stop, ports, a URL."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from mlstack.local.processes import PlatformError, ProcessRecord, tail, terminate, wait_until
from mlstack.local.state import PlatformConfig, StateDir
from mlstack.settings import Settings

LOG_TAIL_LINES = 40


class Service(ABC):
    name: str
    start_timeout_seconds: float = 60.0
    stop_timeout_seconds: float = 20.0

    def __init__(self, state: StateDir, config: PlatformConfig, settings: Settings) -> None:
        self.state = state
        self.config = config
        self.settings = settings

    @property
    @abstractmethod
    def url(self) -> str:
        """What users connect to."""

    @abstractmethod
    def ports(self) -> list[int]:
        """Every port the service listens on (checked free before it starts)."""

    @abstractmethod
    def launch(self) -> ProcessRecord:
        """Start the process (prepare data first if needed); do not wait for it."""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the service answers as it should."""

    def after_healthy(self) -> None:  # noqa: B027 - optional hook
        """One-time setup once it answers (database, bucket)."""

    @property
    def log_path(self) -> Path:
        return self.state.log(self.name)

    @property
    def pid_file(self) -> Path:
        return self.state.pid_file(self.name)

    def record(self) -> ProcessRecord | None:
        return ProcessRecord.read(self.pid_file)

    def running(self) -> ProcessRecord | None:
        """Our recorded process when it is still alive, else None."""
        record = self.record()
        return record if record is not None and record.live_process() is not None else None

    def start(self) -> ProcessRecord:
        """Launch, record the pid, wait until healthy; raise PlatformError with the log tail."""
        record = self.launch()
        record.write(self.pid_file)
        ok = wait_until(
            self.healthy,
            timeout=self.start_timeout_seconds,
            still_alive=lambda: record.live_process() is not None,
        )
        if not ok:
            error = self.failure(
                "exited during start-up"
                if record.live_process() is None
                else f"not healthy after {self.start_timeout_seconds:.0f} s"
            )
            self.stop()
            raise error
        self.after_healthy()
        return record

    def stop(self) -> bool:
        """Stop our recorded process; True when something was running."""
        record = self.record()
        stopped = record is not None and terminate(record, self.stop_timeout_seconds)
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def failure(self, what: str) -> PlatformError:
        return PlatformError(
            f"{self.name} {what}; last lines of {self.log_path}:\n"
            + tail(self.log_path, LOG_TAIL_LINES)
        )
