"""Write mlstack's distribution metadata (name, version, entry points) from pyproject.toml.

The platform image imports mlstack from /app (PYTHONPATH) instead of pip-installing it, so no
installer writes the `*.dist-info` folder through which importlib.metadata, and so MLflow, finds
entry points. This writes the two files MLflow needs, from the one place they are declared.

    python write-dist-info.py PYPROJECT_TOML SITE_DIR
"""

import sys
import tomllib
from pathlib import Path


def main(pyproject: str, site_dir: str) -> None:
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    folder = Path(site_dir) / f"{project['name']}-{project['version']}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    metadata = f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    (folder / "METADATA").write_text(metadata)
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
        lines.append("")
    (folder / "entry_points.txt").write_text("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
