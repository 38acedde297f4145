"""`docker compose` for a project folder, and what the platform reads from its configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlstack.platform.common import PlatformError, run_tool


@dataclass(frozen=True)
class Compose:
    """`docker compose` in a project folder; COMPOSE_FILE / COMPOSE_PROJECT_NAME pass through.

    `project_name` (`-p`) and `environment` (interpolation variables, through `env`) make another
    project from the same files: the scratch stack an upgrade rehearses on."""

    project_dir: Path
    project_name: str = ""
    environment: tuple[tuple[str, str], ...] = ()

    def command(self, *args: str) -> list[str]:
        prefix = ["env", *(f"{k}={v}" for k, v in self.environment)] if self.environment else []
        name = ["-p", self.project_name] if self.project_name else []
        return [*prefix, "docker", "compose", "--project-directory", str(self.project_dir),
                *name, *args]  # fmt: skip

    def exec_command(self, service: str, *argv: str) -> list[str]:
        return self.command("exec", "-T", service, *argv)

    def project_config(self) -> dict[str, Any]:
        output = run_tool(self.command("config", "--format", "json"), "docker compose config")
        return dict(json.loads(output))

    def running_services(self) -> set[str]:
        output = run_tool(
            self.command("ps", "--status", "running", "--services"), "docker compose ps"
        )
        return set(output.decode().split())


def compose_artifacts_destination(config: dict[str, Any]) -> tuple[str, str]:
    """(bucket, prefix) from the mlflow service's `--artifacts-destination=s3://B/P`."""
    command = config.get("services", {}).get("mlflow", {}).get("command") or []
    words = command.split() if isinstance(command, str) else list(command)
    for index, word in enumerate(words):
        value = None
        if word.startswith("--artifacts-destination="):
            value = word.split("=", 1)[1]
        elif word == "--artifacts-destination" and index + 1 < len(words):
            value = words[index + 1]
        if value and value.startswith("s3://"):
            bucket, _, prefix = value.removeprefix("s3://").partition("/")
            return bucket, prefix
    raise PlatformError("cannot find `--artifacts-destination=s3://...` in the mlflow service")
