"""`mlstack local up --serving-workers N` (or MLSTACK_SERVE_WORKERS / Compose's SERVING_WORKERS):
the serving process the platform starts gets that many workers, and the choice is kept in
platform.json like every other `up` option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlstack.local.platform import LocalPlatform, UpOptions, resolve_config
from mlstack.local.serving import ServingService
from mlstack.local.state import PlatformConfig, StateDir
from mlstack.settings import Settings

pytestmark = pytest.mark.unit


def serving_command(config: PlatformConfig, settings: Settings, tmp_path: Path) -> list[str]:
    platform = LocalPlatform(StateDir(tmp_path), config, settings)
    service = platform.service("serving")
    assert isinstance(service, ServingService)
    return service.command()


def workers_of(command: list[str]) -> int:
    return int(command[command.index("--workers") + 1])


def test_the_flag_sets_the_workers_and_is_kept(tmp_path: Path) -> None:
    config = resolve_config(None, UpOptions(serving_workers=2))
    assert workers_of(serving_command(config, Settings(), tmp_path)) == 2
    config.save(tmp_path / "platform.json")
    kept = PlatformConfig.load(tmp_path / "platform.json")
    assert kept is not None
    # A later plain `up` keeps it, even against the environment.
    again = resolve_config(kept, UpOptions())
    env = Settings.model_validate({"MLSTACK_SERVE_WORKERS": "3"})
    assert workers_of(serving_command(again, env, tmp_path)) == 2


@pytest.mark.parametrize("variable", ["MLSTACK_SERVE_WORKERS", "SERVING_WORKERS"])
def test_without_the_flag_the_environment_decides(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = resolve_config(None, UpOptions())
    assert workers_of(serving_command(config, Settings(), tmp_path)) == 1
    monkeypatch.setenv(variable, "3")
    assert workers_of(serving_command(config, Settings(), tmp_path)) == 3


def test_an_old_platform_json_without_the_field_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    path.write_text('{"artifacts": "s3", "workers": 2, "mlflow_port": 5000}\n')
    config = PlatformConfig.load(path)
    assert config is not None and config.serving_workers == 0


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_count_is_refused_with_usage(value: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlstack", "local", "up", "--state-dir", str(tmp_path),
         "--serving-workers", value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--serving-workers" in done.stderr
    assert not (tmp_path / "platform.json").exists()
