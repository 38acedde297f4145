"""The tracking server's S3 artifact store, without presigned transfers.

MLflow 3.17's server tells clients (`GET /api/3.0/mlflow/server-info`) that it offers presigned
multipart downloads and uploads whenever the repository behind `--artifacts-destination` is an
instance of `MultipartDownloadMixin` / `MultipartUploadMixin`, which MLflow's own
`S3ArtifactRepository` is. Clients then fetch every downloaded file (and every upload of 500 MB
or more) straight from URLs signed for the server's S3 endpoint: `http://minio:9000` in Compose,
a name only the containers resolve, and a network the host is not on. They retry for minutes
without an error.

`ProxiedS3ArtifactRepository` does the same S3 work by delegating to MLflow's repository, but is
not one of those mixins: the server advertises no presigned transfers, answers the presigned and
multipart endpoints with 501, and every transfer goes through its proxy
(`/api/2.0/mlflow-artifacts/artifacts/...`), which any client of the tracking URI can reach.

Downloads through that proxy stream (`open_download`, served by mlstack/tracking_app.py):
MLflow 3.17's proxy first copies the whole object from S3 into a temporary directory and only
then sends its first byte, so a 2 GB model costs 2 GB of the server's disk (a tmpfs, so memory, in
Compose) and two full transfers one after the other. Here the object's bytes go on to the client
as they arrive from S3, read ahead by a bounded queue, with its Content-Length.

pyproject.toml registers it (through mlstack.plugins) for the `s3` scheme in MLflow's
`mlflow.artifact_repository` entry-point group. MLflow registers entry points after its built-in schemes, so this one replaces
the built-in `s3` repository in every process that sees mlstack's distribution metadata: each
uvicorn worker of `mlflow server` (the editable install of the local platform; the platform
image writes the metadata next to /app, see Dockerfile.mlflow), and equally any client process,
where it behaves exactly like the built-in one.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import queue
import threading
from collections.abc import AsyncIterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from mimetypes import guess_type
from typing import Any, BinaryIO

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import (
    ARTIFACT_STREAM_CHUNK_SIZE,
    ArtifactRepository,
    MultipartDownloadMixin,
    MultipartUploadMixin,
    PresignedUploadMixin,
    StreamUploadMixin,
)
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

# The mixins whose presence makes the server hand out presigned URLs.
PRESIGNED_MIXINS = (MultipartDownloadMixin, MultipartUploadMixin, PresignedUploadMixin)
# Streamed uploads go to S3 in parts of this size (S3's minimum is 5 MiB, its limit 10,000 parts:
# up to 160 GiB per artifact), so one upload holds at most one part in memory.
PART_SIZE = 16 * 1024 * 1024
# Parts sent to S3 at once per upload, while the next part is read from the client: sending one
# part at a time stopped reading the request body for every part's round trip to S3. Bounds an
# upload's memory at about (PARTS_IN_FLIGHT + 1) * PART_SIZE.
PARTS_IN_FLIGHT = 2
# Downloads: chunks read from S3 ahead of the client, so S3 and the client's connection are busy at
# the same time. Bounds a download's memory at about (READ_AHEAD + 1) * ARTIFACT_STREAM_CHUNK_SIZE.
READ_AHEAD = 8


class ProxiedS3ArtifactRepository(ArtifactRepository, StreamUploadMixin):
    """MLflow's S3 repository for every read and write, minus presigned URLs.

    Unlike MLflow's (3.17), it also takes uploads as a stream (StreamUploadMixin): the server's
    proxy then sends each request body on to S3 part by part, instead of first writing the whole
    file to a temporary file, which in the Compose stack is a tmpfs, so memory.
    """

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._s3 = S3ArtifactRepository(
            artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri
        )

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        self._s3.log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._s3.log_artifacts(local_dir, artifact_path)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        return self._s3.list_artifacts(path)

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        self._s3._download_file(remote_file_path, local_path)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        self._s3.delete_artifacts(artifact_path)

    def open_download(self, artifact_path: str) -> tuple[int, Iterator[bytes]] | None:
        """The object at `artifact_path` as (size, chunks) streamed from S3, or None when there
        is no such object (a folder, or nothing), for MLflow's own answer to that. Closing the
        chunks (the server does when the client goes) stops the read."""
        client, bucket, key, owner = self._s3_target(artifact_path)
        try:
            answer = client.get_object(Bucket=bucket, Key=key, **owner)
        except Exception as exc:  # botocore's ClientError (not imported: trainers load this module)
            error = getattr(exc, "response", None) or {}
            if error.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return int(answer["ContentLength"]), _read_ahead(answer["Body"])

    def is_folder(self, artifact_path: str) -> bool:
        """Whether objects exist below `artifact_path` (S3 has no folders, only key prefixes)."""
        client, bucket, key, owner = self._s3_target(artifact_path)
        prefix = key.rstrip("/") + "/"
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1, **owner)
        return bool(listed.get("KeyCount") or listed.get("Contents"))

    def _s3_target(self, artifact_path: str) -> tuple[Any, str, str, dict[str, str]]:
        """(client, bucket, key, bucket-owner arguments) of `artifact_path` in this store."""
        s3 = self._s3
        bucket, root = s3.parse_s3_compliant_uri(s3.artifact_uri)
        key = posixpath.join(root, artifact_path)
        return s3._get_s3_client(), bucket, key, dict(s3._bucket_owner_params)

    def upload_archived_trace_data_bytes(self, data: bytes) -> None:
        self._s3.upload_archived_trace_data_bytes(data)

    def log_artifact_from_stream(
        self, stream: BinaryIO, artifact_file_name: str, artifact_path: str | None = None
    ) -> None:
        upload = _StreamedUpload(self, artifact_file_name, artifact_path)
        try:
            for chunk in iter(lambda: stream.read(ARTIFACT_STREAM_CHUNK_SIZE), b""):
                upload.add(chunk)
            upload.finish()
        except BaseException:
            upload.abort()
            raise

    async def log_artifact_from_async_stream(
        self,
        chunks: AsyncIterable[bytes],
        artifact_file_name: str,
        artifact_path: str | None = None,
    ) -> None:
        upload = _StreamedUpload(self, artifact_file_name, artifact_path)
        try:
            async for chunk in chunks:
                if upload.add_would_send(chunk):
                    await asyncio.to_thread(upload.add, chunk)
                else:
                    upload.add(chunk)
            await asyncio.to_thread(upload.finish)
        except BaseException:
            await asyncio.to_thread(upload.abort)
            raise


def _read_ahead(body: Any) -> Iterator[bytes]:
    """The chunks of an S3 object's body, read on a thread of their own up to READ_AHEAD chunks
    ahead of the consumer. A read error is raised to the consumer where it happened; a consumer
    that stops early (closes the generator) stops the reader and closes the body."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(READ_AHEAD)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in body.iter_chunks(ARTIFACT_STREAM_CHUNK_SIZE):
                if not put(chunk):
                    return
            put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            with contextlib.suppress(Exception):
                body.close()

    reader = threading.Thread(target=read, name="mlstack-s3-read", daemon=True)
    reader.start()
    try:
        while (item := chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


class _StreamedUpload:
    """One object written from chunks: a single PUT when it fits in one part, else an S3
    multipart upload of PART_SIZE parts (up to PARTS_IN_FLIGHT sent at once, on threads of their
    own, while more is read), aborted on failure (no half object, no stray parts)."""

    def __init__(
        self, repository: ProxiedS3ArtifactRepository, file_name: str, artifact_path: str | None
    ) -> None:
        s3 = repository._s3
        self.bucket, prefix = s3.parse_s3_compliant_uri(repository.artifact_uri)
        self.key = posixpath.join(prefix, artifact_path or "", posixpath.basename(file_name))
        self.client = s3._get_s3_client()
        self.owner: dict[str, str] = dict(s3._bucket_owner_params)
        # What MLflow's own upload sets: guessed type and encoding, MLFLOW_S3_UPLOAD_EXTRA_ARGS.
        content_type, encoding = guess_type(file_name)
        self.extra: dict[str, Any] = {
            **({"ContentType": content_type} if content_type else {}),
            **({"ContentEncoding": encoding} if encoding else {}),
            **self.owner,
            **(S3ArtifactRepository.get_s3_file_upload_extra_args() or {}),
        }
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[Future[dict[str, Any]]] = []
        self.sender: ThreadPoolExecutor | None = None

    def add_would_send(self, chunk: bytes) -> bool:
        return len(self.buffer) + len(chunk) >= PART_SIZE

    def add(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= PART_SIZE:
            with memoryview(self.buffer) as view, view[:PART_SIZE] as head:
                part = bytes(head)  # one copy; the views are released before the del
            del self.buffer[:PART_SIZE]
            self._send_part(part)

    def finish(self) -> None:
        if self.upload_id is None:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer), **self.extra
            )
            return
        if self.buffer:
            self._send_part(bytes(self.buffer))
        parts = [future.result() for future in self.parts]  # raises a failed part's error
        self._stop_sender()
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
            **self.owner,
        )

    def abort(self) -> None:
        """Best effort, on the way out of a failure that is raised anyway."""
        for future in self.parts:
            future.cancel()
        self._stop_sender()
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, **self.owner
                )

    def _send_part(self, body: bytes) -> None:
        if self.upload_id is None:
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self.extra
            )
            self.upload_id = created["UploadId"]
            self.sender = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="mlstack-s3-part")
        assert self.sender is not None
        pending = [future for future in self.parts if not future.done()]
        while len(pending) >= PARTS_IN_FLIGHT:  # backpressure: the client waits, memory stays
            _, still = wait(pending, return_when=FIRST_COMPLETED)
            pending = list(still)
        for future in self.parts:
            if future.done():
                future.result()  # a failed part ends the upload now, not at the last part
        number = len(self.parts) + 1
        self.parts.append(self.sender.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            **self.owner,
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _stop_sender(self) -> None:
        if self.sender is not None:
            self.sender.shutdown(wait=True)
            self.sender = None


def advertises_presigned(repository: object) -> bool:
    """Whether MLflow's server would offer presigned transfers for this repository."""
    return isinstance(repository, PRESIGNED_MIXINS)


def s3_scheme_is_proxied_only() -> bool:
    """Whether MLflow, in this process, builds `s3://` repositories with this module's class
    (False when mlstack's entry points are not visible, e.g. a stale editable install)."""
    from mlflow.store.artifact.artifact_repository_registry import (
        get_registered_artifact_repositories,
    )

    from mlstack.plugins import proxied_s3_repository

    return get_registered_artifact_repositories().get("s3") is proxied_s3_repository
