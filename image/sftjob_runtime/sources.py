"""Bring remote inputs to local paths: s3:// data files and model prefixes.

The data loader and transformers read local files; this module is the
one place that knows other schemes. S3 access uses the job's S3 endpoint
and region (spec.output.endpoint/region) and the credentials in the
environment (or the pod's identity). Hub ids pass through untouched:
transformers fetches them itself. pvc:// paths never arrive here: the
operator mounts the claim and rewrites them to plain paths.
"""

from __future__ import annotations

from pathlib import Path

from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key → (bucket, key)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


# Under the cache root, beside (not inside) the downloaded trees: the ETag of each cached object.
ETAGS = ".etags"


def s3_client(endpoint: str | None, region: str | None):
    """A boto3 S3 client for the job's endpoint and region (credentials from the environment or identity)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None)


def download(client, bucket: str, key: str, dest: Path, size: int | None = None, etag: str | None = None,
             tag: Path | None = None) -> None:
    """Download one object through a `.partial` file (never a half file under the real name).

    A cached copy is reused only when its size matches and, with `etag` and
    `tag` (where the ETag of the cached copy is recorded, outside the
    downloaded tree), when the ETag does too: an object replaced by another of
    the same size is downloaded again.
    """
    if size is not None and dest.is_file() and dest.stat().st_size == size:
        if etag is None or tag is None or (tag.is_file() and tag.read_text() == etag):
            return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    client.download_file(bucket, key, str(tmp))
    tmp.replace(dest)
    if etag is not None and tag is not None:
        tag.parent.mkdir(parents=True, exist_ok=True)
        tag.write_text(etag)


def fetch_s3_file(uri: str, dest_dir: Path, *, field: str, endpoint: str | None = None, region: str | None = None) -> str:
    """Download one object (skipped when the cached copy has its size and ETag); returns the local path."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    dest = dest_dir / bucket / key
    try:
        client = s3_client(endpoint, region)
        head = client.head_object(Bucket=bucket, Key=key)
        download(client, bucket, key, dest, head["ContentLength"], head.get("ETag"), dest_dir / ETAGS / bucket / key)
    except (ClientError, BotoCoreError) as e:
        raise RuntimeFailure(Reason.DATASET_NOT_FOUND, f"{field}: cannot read {uri} ({brief_error(e)})", ExitCode.DATASET) from None
    return str(dest)


def fetch_s3_prefix(uri: str, dest_dir: Path, *, field: str, endpoint: str | None = None, region: str | None = None) -> str:
    """Download every object under a prefix (a model directory); returns the local directory."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    root = dest_dir / bucket / prefix
    try:
        client = s3_client(endpoint, region)
        found = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                found += 1
                download(client, bucket, obj["Key"], root / rel, obj["Size"], obj.get("ETag"),
                         dest_dir / ETAGS / bucket / obj["Key"])
    except (ClientError, BotoCoreError) as e:
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, f"{field}: cannot read {uri} ({brief_error(e)})", ExitCode.MODEL) from None
    if not found:
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, f"{field}: no objects under {uri}", ExitCode.MODEL)
    return str(root)


def brief_error(e: Exception) -> str:
    """The error code and message, never request details (which can carry signed URLs)."""
    err = getattr(e, "response", {}).get("Error", {}) if hasattr(e, "response") else {}
    if err:
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    return type(e).__name__
