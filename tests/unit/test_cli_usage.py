"""Misuse of every command line prints usage and exits 2; `-h` prints usage on stdout and exits 0.

Covered, and found rather than listed where possible so new ones are covered too:
- `mlstack`: the user's commands as processes, and every sub-command of the parser tree in-process;
- each `<model>/train.py` (every folder with a train.py beside a params.json);
- every `scripts/*.sh`, run with stand-ins for python, docker, curl, git, apt-get ... first on PATH
  that record any call: misuse must be rejected before the script does anything at all.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BOGUS = "--bogus-flag"
TRAINERS = sorted(
    p.parent.name for p in ROOT.glob("*/train.py") if (p.parent / "params.json").exists()
)
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.sh"))
# Commands a script could run before it looks at its arguments: each is replaced by a stand-in.
STAND_INS = ("python", "python3", "python3.11", "pip", "pip3", "uv", "mlstack", "pytest",
             "docker", "docker-compose", "dockerd", "curl", "wget", "git", "apt-get", "apt",
             "sudo", "debootstrap")  # fmt: skip


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, env=env
    )


def has_usage(text: str) -> bool:
    return "usage:" in text.lower()


# --- mlstack --------------------------------------------------------------------------------

MLSTACK_MISUSE = [
    pytest.param([], id="no arguments"),
    pytest.param(["bogus-command"], id="unknown sub-command"),
    pytest.param(["serve", BOGUS], id="serve with a bad flag"),
    pytest.param(["serve", "--port", "not-a-port"], id="serve with a bad port"),
    pytest.param(["local"], id="local without a sub-command"),
    pytest.param(["local", "up", "--artifacts", "bogus"], id="local up --artifacts bogus"),
    pytest.param(["local", "up", "--mlflow-port", "70000"], id="local up with a bad port"),
    pytest.param(["local", "logs", "no-such-service"], id="local logs of an unknown service"),
]


@pytest.mark.parametrize("args", MLSTACK_MISUSE)
def test_mlstack_misuse_exits_2_with_usage(args: list[str]) -> None:
    result = run([sys.executable, "-m", "mlstack", *args])
    assert result.returncode == 2, result
    assert has_usage(result.stderr) and result.stdout == "", result


def test_mlstack_help_exits_0_on_stdout() -> None:
    result = run([sys.executable, "-m", "mlstack", "-h"])
    assert result.returncode == 0 and has_usage(result.stdout), result


def sub_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:  # fmt: skip
    """Every (path, parser) below `parser`: ('serve',), ('local',), ('local', 'up'), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from sub_commands(child, (*path, name))


def every_sub_command() -> list[tuple[str, ...]]:
    from mlstack.cli import build_parser

    return [path for path, _ in sub_commands(build_parser())]


@pytest.mark.parametrize("path", every_sub_command(), ids=" ".join)
def test_every_mlstack_sub_command_rejects_a_bad_flag_with_usage(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlstack.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*path, BOGUS])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    # argparse reports a leaf's unknown flag with the top-level usage, a group's with its own.
    assert "usage: mlstack" in err and (BOGUS in err or "required" in err), err


# --- <model>/train.py -----------------------------------------------------------------------


def test_every_trainer_is_covered() -> None:
    assert {"linear_model", "logistic_model", "random_forest_model"} <= set(TRAINERS)


@pytest.fixture(scope="module")
def trainer_answers() -> dict[tuple[str, str], tuple[int, str, str]]:
    """`<model>/train.py --bogus-flag` and `-h` for every trainer, all at once (each process pays
    for importing scikit-learn): (model, flag) -> (exit code, stdout, stderr)."""
    started = {
        (model, flag): subprocess.Popen(
            [sys.executable, str(ROOT / model / "train.py"), flag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for model in TRAINERS
        for flag in (BOGUS, "-h")
    }
    answers = {}
    for key, process in started.items():
        out, err = process.communicate(timeout=120)
        answers[key] = (process.returncode, out, err)
    return answers


@pytest.mark.parametrize("model", TRAINERS)
def test_trainer_misuse_exits_2_with_usage(
    model: str, trainer_answers: dict[tuple[str, str], tuple[int, str, str]]
) -> None:
    code, out, err = trainer_answers[(model, BOGUS)]
    assert code == 2, (out, err)
    assert has_usage(err) and f"{model}/train.py" in err and BOGUS in err, err
    assert out == ""


@pytest.mark.parametrize("model", TRAINERS)
def test_trainer_help_exits_0_on_stdout(
    model: str, trainer_answers: dict[tuple[str, str], tuple[int, str, str]]
) -> None:
    code, out, err = trainer_answers[(model, "-h")]
    assert code == 0 and has_usage(out), (out, err)


# --- scripts/*.sh ---------------------------------------------------------------------------


@pytest.fixture
def guarded_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with stand-ins that log any call and fail."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in STAND_INS:
        stand_in = bin_dir / name
        stand_in.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 97\n')
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    hidden = ("PYTHON", "VENV", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env["PATH"] = f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"
    return env, calls


def test_scripts_are_found() -> None:
    assert {"bootstrap.sh", "test.sh", "demo.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_misuse_exits_2_with_usage_before_doing_anything(
    script: str, guarded_env: tuple[dict[str, str], Path]
) -> None:
    env, calls = guarded_env
    result = run(["bash", str(ROOT / "scripts" / script), BOGUS], env=env)
    ran = calls.read_text() if calls.exists() else ""
    assert result.returncode == 2, f"exit {result.returncode}; ran: {ran!r}; {result.stderr}"
    assert has_usage(result.stderr), result.stderr
    assert ran == "", f"{script} ran commands before rejecting its arguments: {ran}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help_exits_0_on_stdout(
    script: str, guarded_env: tuple[dict[str, str], Path]
) -> None:
    env, calls = guarded_env
    result = run(["bash", str(ROOT / "scripts" / script), "-h"], env=env)
    assert result.returncode == 0, result
    assert has_usage(result.stdout), result.stdout
    assert not calls.exists(), calls.read_text()
