"""`mlstack` command line: `mlstack serve ...`, `mlstack promote NAME`, `mlstack local
up|down|status|logs` and `mlstack storage ensure-bucket`.

Each sub-package registers its own sub-commands; heavy imports (MLflow, scikit-learn) happen inside
the command functions so that `mlstack -h` and argument errors stay instant. Misuse exits 2 with
usage (argparse's convention, which the scripts and tests rely on).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlstack import __version__


def build_parser() -> argparse.ArgumentParser:
    from mlstack.backup import register as register_backup
    from mlstack.gc import register as register_gc
    from mlstack.importer import register as register_import
    from mlstack.local.cli import register as register_local
    from mlstack.serving.cli import register as register_serve
    from mlstack.storage import register as register_storage
    from mlstack.upgrade import register as register_upgrade

    parser = argparse.ArgumentParser(
        prog="mlstack", description="Self-hosted MLflow platform: serving and a local platform."
    )
    parser.add_argument("--version", action="version", version=f"mlstack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_serve(sub)
    register_local(sub)
    register_storage(sub)
    register_backup(sub)
    register_gc(sub)
    register_import(sub)
    register_upgrade(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
