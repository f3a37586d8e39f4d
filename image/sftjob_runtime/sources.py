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
from sftjob_runtime import s3
from sftjob_runtime.errors import RuntimeFailure, one_line


# Under the cache root, beside (not inside) the downloaded trees: the ETag of each cached object.
ETAGS = ".etags"


def fetch_s3_file(uri: str, dest_dir: Path, *, field: str, endpoint: str | None = None, region: str | None = None) -> str:
    """Download one object (skipped when the cached copy has its size and ETag); returns the local path."""
    bucket, key = s3.split(uri)
    dest = dest_dir / bucket / key
    try:
        client = s3.client(endpoint, region)
        head = client.head_object(Bucket=bucket, Key=key)
        s3.download(client, bucket, key, dest, head["ContentLength"], head.get("ETag"), dest_dir / ETAGS / bucket / key)
    except s3.storage_errors() as e:
        raise RuntimeFailure(Reason.DATASET_NOT_FOUND, one_line(f"{field}: cannot read {uri} ({s3.describe(e, field)})"),
                             ExitCode.DATASET) from None
    return str(dest)


def fetch_s3_prefix(uri: str, dest_dir: Path, *, field: str, endpoint: str | None = None, region: str | None = None) -> str:
    """Download every object under a prefix (a model directory); returns the local directory."""
    bucket, prefix = s3.split(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    root = dest_dir / bucket / prefix
    try:
        client = s3.client(endpoint, region)
        found = 0
        for obj in s3.objects(client, bucket, prefix):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            found += 1
            s3.download(client, bucket, obj["Key"], root / rel, obj["Size"], obj.get("ETag"),
                        dest_dir / ETAGS / bucket / obj["Key"])
    except s3.storage_errors() as e:
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, one_line(f"{field}: cannot read {uri} ({s3.describe(e, field)})"),
                             ExitCode.MODEL) from None
    if not found:
        raise RuntimeFailure(Reason.MODEL_NOT_FOUND, f"{field}: no objects under {uri}", ExitCode.MODEL)
    return str(root)
