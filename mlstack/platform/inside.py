"""Inside the Compose stack's `mlflow` container: the bucket over stdio for the host side
(`ComposeObjectStore`). stdout carries only the tar stream or the JSON lines."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from dataclasses import asdict
from typing import IO, Any

from mlstack.platform.common import (
    CHUNK_BYTES,
    PlatformError,
    check_key,
    mlflow_version,
    mlstack_version,
    reporting_errors,
)
from mlstack.platform.objects import ObjectEntry, S3Store

SPOOL_BYTES = 64 * 1024 * 1024  # objects up to this size are buffered in memory, larger on disk


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
                raise PlatformError(f"unexpected tar member {member.name!r}")
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


def register(commands: Any) -> None:
    """The in-container sub-commands, under `mlstack backup` (where images since the first
    Compose backup look for them)."""
    for name, helptext in (
        ("export-objects", "(inside the compose mlflow container) the bucket as a tar on stdout"),
        ("import-objects", "(inside the compose mlflow container) a tar on stdin into the bucket"),
        ("list-objects", "(inside the compose mlflow container) key, size, sha256 as JSON lines"),
        ("stat-objects", "(inside the compose mlflow container) key, size, mtime as JSON lines"),
        ("delete-objects", "(inside the compose mlflow container) delete the keys on stdin"),
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


def cmd_inside(args: argparse.Namespace) -> int:
    def run() -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            run_with_store(container_store(args.bucket))
        except (BotoCoreError, ClientError) as error:
            raise PlatformError(f"s3://{args.bucket}: {error}") from None

    def run_with_store(store: S3Store) -> None:
        if args.backup_command == "export-objects":
            export_objects(store, sys.stdout.buffer)
        elif args.backup_command == "import-objects":
            import_objects(store, sys.stdin.buffer, args.replace)
        elif args.backup_command == "stat-objects":
            for found in store.stat():
                print(json.dumps(asdict(found)), flush=False)
        elif args.backup_command == "delete-objects":
            keys = [json.loads(line) for line in sys.stdin if line.strip()]
            store.delete([check_key(key) for key in keys])
        elif args.no_hash:
            for key in store.list_keys():
                print(json.dumps(asdict(ObjectEntry(key, 0, ""))), flush=False)
        else:
            for entry in store.entries():
                print(json.dumps(asdict(entry)), flush=False)
        sys.stdout.flush()

    return reporting_errors(f"mlstack backup {args.backup_command}", run)


def cmd_versions(args: argparse.Namespace) -> int:
    print(json.dumps({"mlstack": mlstack_version(), "mlflow": mlflow_version()}))
    return 0
