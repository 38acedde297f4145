"""The local platform as a whole: up (in order), down (in reverse), status, logs, the env file."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mlstack.local.postgres import PostgresService
from mlstack.local.processes import TELEMETRY_OFF, PlatformError, choose_free_ports, port_is_free
from mlstack.local.processes import tail as tail_lines
from mlstack.local.s3 import INTERNAL_PORT_NAMES, S3Service, choose_internal_ports
from mlstack.local.services import Service
from mlstack.local.serving import ServingService
from mlstack.local.state import ArtifactsMode, PlatformConfig, StateDir, write_env_file
from mlstack.local.tracking import TrackingService
from mlstack.settings import Settings

SERVICE_CLASSES: tuple[type[Service], ...] = (
    PostgresService,
    S3Service,
    TrackingService,
    ServingService,
)
DEFAULT_ARTIFACTS_DIR = Path("mlartifacts")

Print = Callable[[str], None]


@dataclass(frozen=True)
class UpOptions:
    """What the user asked for on the command line (None: keep the persisted or default)."""

    artifacts: ArtifactsMode | None = None
    artifacts_dir: Path | None = None
    workers: int | None = None
    mlflow_port: int | None = None
    serving_port: int | None = None
    s3_port: int | None = None
    serving_workers: int | None = None


def resolve_config(persisted: PlatformConfig | None, options: UpOptions) -> PlatformConfig:
    """Persisted choices, overridden by explicit options; ports not chosen yet get free ones."""
    config = replace(persisted) if persisted else PlatformConfig()
    overrides = {k: v for k, v in asdict(options).items() if v is not None}
    if "artifacts_dir" in overrides:
        overrides["artifacts_dir"] = str(Path(overrides["artifacts_dir"]).resolve())
    config = replace(config, **overrides)
    if not config.artifacts_dir:
        config.artifacts_dir = str(DEFAULT_ARTIFACTS_DIR.resolve())
    return choose_missing_ports(config)


def choose_missing_ports(config: PlatformConfig) -> PlatformConfig:
    public = {config.mlflow_port, config.serving_port, config.s3_port}
    if not config.postgres_port:
        config.postgres_port = choose_free_ports(1, avoid=public)[0]
    if set(config.s3_internal_ports) != set(INTERNAL_PORT_NAMES):
        config.s3_internal_ports = choose_internal_ports(avoid=public | {config.postgres_port})
    return config


class LocalPlatform:
    def __init__(self, state: StateDir, config: PlatformConfig, settings: Settings) -> None:
        self.state = state
        self.config = config
        self.settings = settings
        self.every_service = [cls(state, config, settings) for cls in SERVICE_CLASSES]

    @classmethod
    def load(cls, state: StateDir, settings: Settings) -> LocalPlatform:
        """The platform as persisted in `state` (defaults when it was never started)."""
        return cls(state, PlatformConfig.load(state.config_file) or PlatformConfig(), settings)

    @property
    def services(self) -> list[Service]:
        """The services this configuration runs, in start order (no S3 with file artifacts)."""
        if self.config.artifacts == "s3":
            return list(self.every_service)
        return [s for s in self.every_service if not isinstance(s, S3Service)]

    def service(self, name: str) -> Service:
        return next(s for s in self.every_service if s.name == name)

    # --- up ---------------------------------------------------------------------------------

    def refuse_reconfiguring_while_running(self, wanted: PlatformConfig) -> None:
        """Changing ports or artifacts of a running platform needs a `down` first."""
        running = [s.name for s in self.every_service if s.running() is not None]
        current, changes = asdict(self.config), asdict(wanted)
        changed = sorted(k for k in changes if changes[k] != current[k])
        if running and changed:
            raise PlatformError(
                f"{', '.join(running)} already running with other settings ({', '.join(changed)}"
                f" differ); run `mlstack local down --state-dir {self.state.root}` first"
            )

    def up(self, say: Print) -> None:
        self.state.create()
        self.check_ports_distinct()
        self.check_ports_free()
        self.config.save(self.state.config_file)
        started: list[Service] = []
        try:
            for service in self.services:
                if self.ensure_running(service, say):
                    started.append(service)
        except PlatformError as error:
            raise PlatformError(f"{error}\n{self.roll_back(started)}") from None
        write_env_file(self.state.env_file, self.env_values())
        self.print_summary(say)

    def ensure_running(self, service: Service, say: Print) -> bool:
        """Start `service` unless it already runs; True when this call started it."""
        record = service.running()
        if record is not None:
            if not service.healthy():
                raise service.failure(f"is running (pid {record.pid}) but not healthy")
            say(f"{service.name:<9} already running (pid {record.pid})")
            return False
        say(f"{service.name:<9} starting ...")
        began = time.monotonic()
        record = service.start()
        say(f"{service.name:<9} started (pid {record.pid}) in {time.monotonic() - began:.1f} s")
        return True

    def roll_back(self, started: list[Service]) -> str:
        """Stop what this `up` started; say what that was and what still runs from before."""
        stopped = [s.name for s in reversed(started) if s.stop()]
        still = [s.name for s in self.every_service if s.running() is not None]
        lines = [f"stopped what this `up` had started: {', '.join(stopped) or 'nothing'}"]
        if still:
            lines.append(
                f"still running from before: {', '.join(still)} "
                f"(`mlstack local down --state-dir {self.state.root}` stops them)"
            )
        return "\n".join(lines)

    def check_ports_distinct(self) -> None:
        ports = [port for service in self.services for port in service.ports()]
        duplicates = sorted({port for port in ports if ports.count(port) > 1})
        if duplicates:
            raise PlatformError(f"the same port is configured twice: {duplicates}")

    def check_ports_free(self) -> None:
        """Every port of every service that is not running yet must be free."""
        taken = [
            f"port {port} ({service.name}) is already in use by another process"
            for service in self.services
            if service.running() is None
            for port in service.ports()
            if not port_is_free(port)
        ]
        if taken:
            hint = "choose other ports (--mlflow-port/--serving-port/--s3-port) or stop it"
            raise PlatformError("\n".join([*taken, hint]))

    def env_values(self) -> dict[str, str]:
        """What `source DIR/env` exports: URIs of every service, S3 access, telemetry off."""
        values = {
            "MLFLOW_TRACKING_URI": self.config.tracking_uri,
            "MLSTACK_PG_URI": self.config.pg_uri(),
            "MLSTACK_SERVING_URL": self.config.serving_url,
            "MLSTACK_STATE_DIR": str(self.state.root),
        }
        if self.config.artifacts == "s3":
            values |= {
                "MLSTACK_S3_ENDPOINT": self.config.s3_endpoint,
                "MLSTACK_BUCKET": self.settings.bucket,
                "MLSTACK_ARTIFACTS_PREFIX": self.settings.artifacts_prefix,
                "AWS_ACCESS_KEY_ID": self.settings.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": self.settings.s3_secret_key,
            }
        else:
            values["MLSTACK_ARTIFACTS_DIR"] = self.config.artifacts_dir
        return values | TELEMETRY_OFF

    def print_summary(self, say: Print) -> None:
        say("")
        say(f"MLflow UI    {self.config.tracking_uri}")
        say(f"Serving      {self.config.serving_url}  ({self.settings.effective_model_uri})")
        if self.config.artifacts == "s3":
            say(f"S3           {self.config.s3_endpoint}  (bucket {self.settings.bucket})")
        else:
            say(f"Artifacts    {self.config.artifacts_dir}")
        say(f"PostgreSQL   {self.config.pg_uri()}")
        say("")
        say(f"source {shlex.quote(str(self.state.env_file))}")

    # --- down, status, logs -----------------------------------------------------------------

    def down(self, say: Print) -> None:
        """Stop, in reverse order, exactly the processes `up` recorded."""
        stopped = []
        for service in reversed(self.every_service):
            record = service.running()
            if service.stop():
                stopped.append(service.name)
                say(f"{service.name:<9} stopped (pid {record.pid if record else '?'})")
        if not stopped:
            say(f"nothing running in {self.state.root}")

    def status(self, say: Print) -> bool:
        """One line per service; True when every one is healthy."""
        all_healthy = True
        for service in self.services:
            record = service.running()
            healthy = record is not None and service.healthy()
            all_healthy &= healthy
            state = "healthy" if healthy else ("unhealthy" if record else "not running")
            if healthy and isinstance(service, ServingService):
                state += " (model loaded)" if service.model_loaded() else " (no model yet)"
            pid = str(record.pid) if record else "-"
            say(f"{service.name:<9} {pid:>8}  {service.url:<48} {state}")
        return all_healthy

    def logs(self, say: Print, service_name: str | None, lines: int) -> None:
        names = [service_name] if service_name else [s.name for s in self.every_service]
        for name in names:
            path = self.state.log(name)
            if service_name is None and not path.exists():
                continue
            if service_name is None:
                say(f"==> {path} <==")
            say(tail_lines(path, lines))
