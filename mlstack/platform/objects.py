"""A platform's artifact store: an S3 bucket (boto3), the artifacts folder of `mlstack local up
--artifacts file`, or the Compose stack's bucket reached through its `mlflow` container (which has
boto3, the S3 credentials and the network): `mlstack backup list-objects|export-objects|
import-objects|delete-objects` run there and stream JSON lines or a tar over stdio.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from mlstack.platform.common import (
    CHUNK_BYTES,
    COMMAND_TIMEOUT_SECONDS,
    PlatformError,
    check_key,
    run_tool,
    sha256_file,
    sha256_of,
)
from mlstack.platform.compose import Compose


@dataclass(frozen=True)
class ObjectEntry:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StoredObject:
    """An object as a listing shows it: no read of its bytes."""

    key: str
    size: int
    modified: float  # seconds since the epoch


DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys per request


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

    def stat(self) -> list[StoredObject]:
        """Every object's key, size and modification time, sorted by key (all pages)."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Delete these objects (in batches); a key already gone is not an error."""
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
            raise PlatformError(f"cannot list s3://{self.bucket}: {error}") from None
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

    def stat(self) -> list[StoredObject]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: list[StoredObject] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                found += [
                    StoredObject(item["Key"], int(item["Size"]), item["LastModified"].timestamp())
                    for item in page.get("Contents", [])
                ]
        except (BotoCoreError, ClientError) as error:
            raise PlatformError(f"cannot list s3://{self.bucket}: {error}") from None
        return sorted(found, key=lambda found_object: found_object.key)

    def delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (BotoCoreError, ClientError) as error:
                raise PlatformError(f"cannot delete from s3://{self.bucket}: {error}") from None
            errors = answer.get("Errors") or []
            if errors:
                shown = ", ".join(f"{e.get('Key')}: {e.get('Message')}" for e in errors[:5])
                raise PlatformError(f"s3://{self.bucket} refused to delete {len(errors)}: {shown}")


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

    def stat(self) -> list[StoredObject]:
        found = []
        for path, key in self.paths():
            info = path.stat()
            found.append(StoredObject(key, info.st_size, info.st_mtime))
        return found

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self.root / check_key(key)
            path.unlink(missing_ok=True)
            # Folders the deletion emptied go too (up to, never including, the root).
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


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

    def stat(self) -> list[StoredObject]:
        output = run_tool(
            self.inside("stat-objects", "--bucket", self.bucket), f"stat-objects in {self.service}"
        )
        return [StoredObject(**json.loads(line)) for line in output.decode().splitlines() if line]

    def delete(self, keys: list[str]) -> None:
        lines = "".join(json.dumps(check_key(key)) + "\n" for key in keys).encode()
        with tempfile.TemporaryFile() as listing:
            listing.write(lines)
            listing.seek(0)
            command = self.inside("delete-objects", "--bucket", self.bucket)
            run_tool(command, f"delete-objects in {self.service}", stdin=listing)

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
                raise PlatformError(f"export-objects in {self.service} failed:\n{detail}")

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
                raise PlatformError(f"import-objects in {self.service} failed:\n{detail}")


def extract_objects_stream(stream: IO[bytes], folder: Path) -> None:
    """Write the regular files of an uncompressed tar stream to `folder/<name>`."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                raise PlatformError(f"unexpected tar member {member.name!r} in the object stream")
            destination = folder / check_key(member.name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with destination.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
