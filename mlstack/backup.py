"""`mlstack backup create|restore|verify`: one archive holding the whole platform, and back.

An archive is one `.tar.gz` (or `.tar`) with, in this order:

    manifest.json     what is inside and how to check it (see `Manifest`)
    postgres.dump     `pg_dump -Fc` of the tracking database (runs, params, metrics, registry)
    objects/<key>     every object of the artifact bucket (or file of the artifacts folder)

Both kinds of platform (native `mlstack local`, or `--compose`) come as a `Target` from
`mlstack.platform`: its database and object store, reached the way each platform allows.

Restore refuses a target that holds runs, registered models or objects unless `--force`, checks
the whole archive before writing anything, uploads the objects, then restores the database with
`pg_restore --clean --if-exists --single-transaction` (so a schema that `mlflow db upgrade` already
created is fine), and verifies: per-table row counts and every object's sha256 against the
manifest. Exit codes: 0 success, 1 failure or mismatch (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from mlstack.platform import inside
from mlstack.platform.common import (
    PlatformError,
    Say,
    check_key,
    mlstack_version,
    reporting_errors,
    say,
    sha256_file,
    tool_major,
)
from mlstack.platform.database import alembic_revision, table_counts
from mlstack.platform.objects import ObjectEntry
from mlstack.platform.target import Target, add_target_options, target_of

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DUMP_NAME = "postgres.dump"
OBJECTS_DIR = "objects"


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
                raise PlatformError(
                    f"unsupported archive format {data.get('format_version')!r} "
                    f"(this mlstack reads {FORMAT_VERSION})"
                )
            data["objects"] = [ObjectEntry(**entry) for entry in data["objects"]]
            manifest = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise PlatformError(f"{MANIFEST_NAME} is not a valid manifest: {error}") from None
        if manifest.object_count != len(manifest.objects):
            raise PlatformError(f"{MANIFEST_NAME}: object_count disagrees with its object list")
        return manifest

    @property
    def dump_major(self) -> int:
        return tool_major(self.pg_dump_version)


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
            raise PlatformError("the database changed during the dump (is a trainer running?)")
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


def retarget_key(key: str, source_root: str, target_root: str) -> str:
    """Move a key from the source's artifacts root to the target's (`artifacts/x` <-> `x`)."""
    if key.startswith(source_root):
        return target_root + key[len(source_root) :]
    if target_root:
        return key  # outside MLflow's folder: kept where it was
    raise PlatformError(f"object {key!r} lies outside the artifacts root {source_root!r}")


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
            raise PlatformError(f"unexpected entry {member.name!r} in the archive")
        if member.isfile() and member.name.startswith(f"{OBJECTS_DIR}/"):
            check_key(member.name.removeprefix(f"{OBJECTS_DIR}/"))
        yield member


def unpack_archive(archive: Path, into: Path) -> Manifest:
    """Extract `archive` into `into` and check every byte against its manifest."""
    if not archive.is_file():
        raise PlatformError(f"archive {archive} not found")
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, members=list(safe_members(tar)), filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise PlatformError(f"{archive} is not a readable tar archive: {error}") from None
    if not (into / MANIFEST_NAME).is_file():
        raise PlatformError(f"{archive} has no {MANIFEST_NAME}: not an mlstack backup")
    manifest = Manifest.from_json((into / MANIFEST_NAME).read_text())
    problems = archive_problems(manifest, into)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PlatformError(f"{archive} does not match its manifest:\n  {shown}{more}")
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
        raise PlatformError(
            f"the dump was made by PostgreSQL {manifest.dump_major}'s pg_dump; this target's "
            f"pg_restore is {restore_major}: restore into a platform with PostgreSQL >= "
            f"{manifest.dump_major}"
        )
    counts = table_counts(target.database)
    revision = alembic_revision(target.database, counts)
    if revision and manifest.alembic_revision and revision != manifest.alembic_revision:
        raise PlatformError(
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
            raise PlatformError(
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
        except PlatformError as error:
            raise PlatformError(
                f"{error}\nthe target may now hold part of the backup: fix the cause, then run "
                "the restore again with --force"
            ) from None
    say("restore: verifying row counts and object checksums against the manifest")
    problems = target_problems(target, manifest)
    if problems:
        raise PlatformError(
            "restored platform differs from the backup:\n  " + "\n  ".join(problems)
        )
    say(
        f"restore: OK: {len(manifest.table_counts)} tables with the same row counts "
        f"({manifest.table_counts.get('runs', 0)} runs), {manifest.object_count} objects "
        "with the same sha256"
    )
    return manifest


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

    inside.register(commands)


def cmd_create(args: argparse.Namespace) -> int:
    return reporting_errors(
        "mlstack backup create", lambda: create_backup(target_of(args), args.out, say)
    )


def cmd_restore(args: argparse.Namespace) -> int:
    return reporting_errors(
        "mlstack backup restore",
        lambda: restore_backup(target_of(args), args.archive, args.force, say),
    )


def cmd_verify(args: argparse.Namespace) -> int:
    return reporting_errors("mlstack backup verify", lambda: verify_archive(args.archive, say))
