"""The state dir layout and the persisted platform configuration (ports, artifacts mode)."""

from __future__ import annotations

import fcntl
import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

ArtifactsMode = Literal["s3", "file"]

DEFAULT_MLFLOW_PORT = 5000
DEFAULT_SERVING_PORT = 5001
DEFAULT_S3_PORT = 8333
DEFAULT_WORKERS = 2
LOOPBACK = "127.0.0.1"
DB_SUPERUSER = "postgres"
DATABASE = "mlflow"


@dataclass(frozen=True)
class StateDir:
    """Where one platform keeps everything: `DIR/{postgres,s3}` data, logs, run, env."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def postgres_data(self) -> Path:
        return self.root / "postgres"

    @property
    def s3_data(self) -> Path:
        return self.root / "s3"

    @property
    def config_file(self) -> Path:
        return self.root / "platform.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def create(self) -> None:
        for folder in (self.root, self.logs, self.run):
            folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state dir (a second one waits)."""
        self.create()
        with (self.run / "lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class PlatformConfig:
    """What `up` chose; persisted so that restarts reuse the same ports and data."""

    artifacts: ArtifactsMode = "s3"
    artifacts_dir: str = ""
    workers: int = DEFAULT_WORKERS
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    serving_port: int = DEFAULT_SERVING_PORT
    # `mlstack serve` worker processes; 0: not chosen, MLSTACK_SERVE_WORKERS (default 1) decides.
    serving_workers: int = 0
    s3_port: int = DEFAULT_S3_PORT
    postgres_port: int = 0  # 0: not chosen yet
    s3_internal_ports: dict[str, int] = field(default_factory=dict)

    def pg_uri(self, database: str = DATABASE) -> str:
        """A libpq URI (psycopg2 takes it as is)."""
        return f"postgresql://{DB_SUPERUSER}@{LOOPBACK}:{self.postgres_port}/{database}"

    @property
    def sqlalchemy_pg_uri(self) -> str:
        return self.pg_uri().replace("postgresql://", "postgresql+psycopg2://", 1)

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://{LOOPBACK}:{self.serving_port}"

    @classmethod
    def load(cls, path: Path) -> PlatformConfig | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def single_quoted(value: str) -> str:
    """A shell word for `value`, always in single quotes (a quote inside becomes '"'"')."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """`export K='V'` lines, values single-quoted; readable by the owner only (holds S3 keys)."""
    lines = [f"export {key}={single_quoted(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def read_env_file(path: Path) -> dict[str, str]:
    """The values of `write_env_file`'s `export K='V'` lines (what `source DIR/env` sets)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            values[key] = value
    return values
