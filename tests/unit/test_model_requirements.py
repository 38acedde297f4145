"""The pip requirements trainers write with every model are constraints.txt's pins, not a guess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlstack.model_requirements import SKLEARN_MODEL_DISTRIBUTIONS, sklearn_model_requirements

pytestmark = pytest.mark.unit

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            found[normalise(name)] = version.strip()
    return found


def test_written_requirements_are_the_lock_files_pins() -> None:
    written = dict(req.split("==", 1) for req in sklearn_model_requirements())
    assert list(written) == list(SKLEARN_MODEL_DISTRIBUTIONS)
    locked = pins()
    for name, version in written.items():
        assert locked[normalise(name)] == version, (name, version, locked.get(normalise(name)))
