"""S3 object storage shared by every platform: a client for any S3-compatible store, and the
idempotent creation of MLflow's artifact bucket (MLflow never creates it).

`mlstack storage ensure-bucket` is the Docker stack's one-shot init (the `create-bucket` service);
`mlstack local` calls `ensure_bucket` on its SeaweedFS. Plain boto3, path-style addressing, so it
works the same against MinIO, SeaweedFS, Ceph RGW or AWS S3. Endpoint and credentials come from
the variables MLflow's own S3 client reads (`MLFLOW_S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, ...), so the tracking server and this command share one environment.

Exit codes of the command: 0 the bucket exists (created or already there), 1 the store refused
or never answered, 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

REGION = "us-east-1"
# The codes S3-compatible stores answer a HEAD on a missing bucket with (AWS: 404; others vary).
MISSING_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})


class StorageError(RuntimeError):
    """The store refused an operation: wrong credentials, no permission, bad bucket name."""


def s3_client(
    endpoint: str | None,
    access_key: str | None = None,
    secret_key: str | None = None,
    timeout: float = 5.0,
    region: str = REGION,
) -> Any:
    """A boto3 S3 client, path-style, no retries (callers poll).

    `endpoint` None means AWS S3 itself; credentials None means boto3's usual chain
    (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, instance roles).
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1},
        ),
    )


def ensure_bucket(client: Any, bucket: str) -> bool:
    """Create `bucket` unless it exists. Returns True when this call created it.

    Head first, so a second run (or a bucket made by an operator, with its own policy) is left
    alone and needs no create permission.
    """
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code not in MISSING_BUCKET_CODES:
            raise StorageError(f"cannot check bucket {bucket!r}: {error}") from error
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code == "BucketAlreadyOwnedByYou":  # created meanwhile by a concurrent run
            return False
        raise StorageError(f"cannot create bucket {bucket!r}: {error}") from error
    return True


def ensure_bucket_when_reachable(
    client: Any, bucket: str, wait_seconds: float, log: Any = print
) -> bool:
    """`ensure_bucket`, retrying connection failures for up to `wait_seconds` (a store that is
    still starting). Refusals (`StorageError`) are not retried: waiting would not fix them."""
    from botocore.exceptions import BotoCoreError

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ensure_bucket(client, bucket)
        except BotoCoreError as error:
            if time.monotonic() >= deadline:
                raise StorageError(
                    f"S3 endpoint did not answer within {wait_seconds:g} s: {error}"
                ) from error
            log(f"waiting for the S3 endpoint: {error}")
            time.sleep(1.0)


def register(subparsers: Any) -> None:
    """Add `storage ensure-bucket` to the top-level `mlstack` parser."""
    storage = subparsers.add_parser(
        "storage",
        help="S3 artifact storage: create MLflow's bucket",
        description="S3-compatible artifact storage helpers.",
    )
    commands = storage.add_subparsers(dest="storage_command", required=True, metavar="COMMAND")
    ensure = commands.add_parser(
        "ensure-bucket",
        help="create the bucket unless it exists (idempotent)",
        description="Create BUCKET on the S3-compatible store unless it exists (HEAD first). "
        "Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (boto3's chain).",
    )
    ensure.add_argument("--bucket", help="bucket name (default: MLSTACK_BUCKET, else 'mlflow')")
    ensure.add_argument(
        "--endpoint-url",
        default=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        help="S3 endpoint (default: MLFLOW_S3_ENDPOINT_URL; unset means AWS S3)",
    )
    ensure.add_argument(
        "--region", default=os.environ.get("AWS_DEFAULT_REGION") or REGION, help="region"
    )
    ensure.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="retry an endpoint that does not answer yet for this long (default 30)",
    )
    ensure.set_defaults(func=cmd_ensure_bucket)


def cmd_ensure_bucket(args: argparse.Namespace) -> int:
    from mlstack.settings import get_settings

    bucket = args.bucket or get_settings().bucket
    where = args.endpoint_url or "AWS S3"
    client = s3_client(args.endpoint_url, region=args.region)
    try:
        created = ensure_bucket_when_reachable(
            client, bucket, args.wait, log=lambda line: print(f"storage: {line}", flush=True)
        )
    except StorageError as error:
        print(f"storage: error: {error}", file=sys.stderr, flush=True)
        return 1
    state = "created" if created else "already exists"
    print(f"storage: bucket {bucket!r} {state} at {where}", flush=True)
    return 0
