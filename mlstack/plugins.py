"""MLflow plugin entry points (pyproject.toml, `[project.entry-points."mlflow.artifact_repository"]`).

MLflow loads its entry points while it is itself being imported, so this module imports nothing
from MLflow at load time: the target of an entry point that did (mlstack.artifacts) would be
half-initialised whenever a program imported it before MLflow, and MLflow would then skip it with
a warning and keep its built-in repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlstack.artifacts import ProxiedS3ArtifactRepository


def proxied_s3_repository(
    artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
) -> ProxiedS3ArtifactRepository:
    """The `s3` scheme: MLflow's S3 store without presigned transfers (mlstack.artifacts)."""
    from mlstack.artifacts import ProxiedS3ArtifactRepository

    return ProxiedS3ArtifactRepository(
        artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri
    )
