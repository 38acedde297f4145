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

pyproject.toml registers it (through mlstack.plugins) for the `s3` scheme in MLflow's
`mlflow.artifact_repository` entry-point group. MLflow registers entry points after its built-in schemes, so this one replaces
the built-in `s3` repository in every process that sees mlstack's distribution metadata: each
uvicorn worker of `mlflow server` (the editable install of the local platform; the platform
image writes the metadata next to /app, see Dockerfile.mlflow), and equally any client process,
where it behaves exactly like the built-in one.
"""

from __future__ import annotations

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import (
    ArtifactRepository,
    MultipartDownloadMixin,
    MultipartUploadMixin,
    PresignedUploadMixin,
)
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

# The mixins whose presence makes the server hand out presigned URLs.
PRESIGNED_MIXINS = (MultipartDownloadMixin, MultipartUploadMixin, PresignedUploadMixin)


class ProxiedS3ArtifactRepository(ArtifactRepository):
    """MLflow's S3 repository for every read and write, minus presigned URLs."""

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

    def upload_archived_trace_data_bytes(self, data: bytes) -> None:
        self._s3.upload_archived_trace_data_bytes(data)


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
