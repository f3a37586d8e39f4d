"""Everything the runtime does with S3: clients, error lines, downloads and checksummed uploads.

Inputs (`sources`), the export (`export`) and the checkpoint mirror
(`checkpoint_sync`) all come through here, so an S3 problem reads the same
wherever it happens: the error code, S3's message and, where we can tell,
what to change; never request details (they can carry signed URLs) and
never a secret.

Uploads go through boto3's transfer manager. Integrity: every file's
SHA-256 is computed once, before it is sent; a file below the multipart
threshold goes up in one PutObject carrying that SHA-256, so S3 refuses
bytes that do not match it; a larger one goes up as concurrent multipart
uploads with a SHA-256 per part, which S3 checks part by part. A file the
destination provably holds already (same size and a stored SHA-256 equal to
ours, whole-object or composite) is not sent again.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_READ = 1 << 20
MiB = 2**20


def split(uri: str) -> tuple[str, str]:
    """s3://bucket/key → (bucket, key)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def client(endpoint: str | None, region: str | None, *, connections: int = 10):
    """A boto3 S3 client for the job's endpoint and region (credentials from the environment or the pod's identity).

    Retries follow AWS_MAX_ATTEMPTS / the AWS config in standard mode, as for
    any AWS tool; `connections` pooled connections, one per concurrent request,
    or urllib3 discards and reopens them.
    """
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None,
                        config=Config(max_pool_connections=connections, retries={"mode": "standard"}))


# --- errors ---------------------------------------------------------------------------

_HINTS = {
    "NoSuchBucket": "create the bucket or fix {field}",
    "AccessDenied": "grant the credentials in spec.output.credentialsSecretRef access to it",
    "InvalidAccessKeyId": "check the access key in spec.output.credentialsSecretRef",
    "SignatureDoesNotMatch": "check the secret key in spec.output.credentialsSecretRef",
    "ExpiredToken": "refresh the credentials in spec.output.credentialsSecretRef",
}


def storage_errors() -> tuple[type[Exception], ...]:
    """The exceptions an S3 call raises for a storage problem (not a bug of ours)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def describe(e: BaseException, field: str = "spec.output.uri") -> str:
    """What went wrong and, where we can tell, what to change (`field` names the URI): one line, no request details."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code") or "Error"
        text = f"{code} ({err.get('Message') or e.operation_name})"
        hint = _HINTS.get(code)
        return f"{text}; {hint.format(field=field)}" if hint else text
    if isinstance(e, NoCredentialsError):
        return "no S3 credentials found; set spec.output.credentialsSecretRef"
    if isinstance(e, EndpointConnectionError):
        return f"{e}; check spec.output.endpoint"
    return f"{type(e).__name__}: {e}"


# --- reading --------------------------------------------------------------------------

def download(s3, bucket: str, key: str, dest: Path, size: int | None = None, etag: str | None = None,
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
    s3.download_file(bucket, key, str(tmp))
    tmp.replace(dest)
    if etag is not None and tag is not None:
        tag.parent.mkdir(parents=True, exist_ok=True)
        tag.write_text(etag)


def objects(s3, bucket: str, prefix: str):
    """Every object (its listing entry) under a prefix."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


# --- writing --------------------------------------------------------------------------

@dataclass(frozen=True)
class TransferSettings:
    """How files travel to S3: a file of `multipart_threshold` bytes or more goes up in parts of `part_size`.

    Files are sent `concurrency` requests at a time, across files as well as
    across the parts of one file. Below the threshold a file is one PUT whose
    whole-object SHA-256 S3 verifies; above it, parts upload in parallel and
    fail and retry one by one. S3 takes at most 5 GiB in one PUT, so the
    threshold must not exceed that.

    Tuned with benchmarks/export_throughput.py on a simulated link to S3
    (20 ms round trip, 25 MB/s per connection: one connection cannot fill
    the pipe, parallel ones can), 539 MB checkpoint, 2 cores: 16 MiB parts
    were the fastest in every sweep (8-64 MiB x 4-16 requests), 16 requests
    at a time had the better worst and best runs, and a threshold of two
    parts sends mid-sized files (adapters, shards) in parallel too. There
    they export at 2.3-2.9x a sequential put_object loop, against 0.98x for
    one PUT per file. Straight to moto on loopback multipart costs more
    (0.65-0.8x the loop): moto assembles and re-hashes the whole object in
    Python on CompleteMultipartUpload, 3.7-6 s of an 11-13 s export there.
    Each part is held in memory while it is sent: 16 x 16 MiB.
    """

    multipart_threshold: int = 32 * MiB
    part_size: int = 16 * MiB
    concurrency: int = 16


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_READ), b""):
            h.update(chunk)
    return h.hexdigest()


def upload_tree(s3, bucket: str, src: Path, rels: list[str], key, settings: TransferSettings) -> list[dict]:
    """Upload the files `rels` under src to `key(rel)`, skipping what S3 provably holds; returns their manifest entries.

    The largest go first, so hashing the small ones overlaps with sending
    them; the first failure cancels the rest (a failed multipart upload is
    aborted).
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(multipart_threshold=settings.multipart_threshold, multipart_chunksize=settings.part_size,
                            max_concurrency=settings.concurrency, preferred_transfer_client="classic")
    entries = []
    with create_transfer_manager(s3, config) as manager:
        uploads = []
        for rel in sorted(rels, key=lambda r: -(src / r).stat().st_size):
            path = src / rel
            entry = {"path": rel, "size": path.stat().st_size, "sha256": sha256_of(path)}
            entries.append(entry)
            if _holds(s3, bucket, key(rel), path, entry):
                continue
            args: dict = {"Metadata": {"sha256": entry["sha256"]}, "ChecksumAlgorithm": "SHA256"}
            if entry["size"] < settings.multipart_threshold:
                # Our own hash, not one botocore takes later: S3 refuses bytes that differ from what we hashed.
                # (Multipart SHA-256 has no whole-object form: there botocore sends one per part.)
                args["ChecksumSHA256"] = _b64(entry["sha256"])
            uploads.append(manager.upload(str(path), bucket, key(rel), extra_args=args))
        for upload in uploads:
            upload.result()  # the first failure leaves the block, which cancels the rest
    return entries


def put_bytes(s3, bucket: str, key: str, body: bytes, content_type: str = "application/json") -> None:
    """One small object, checksummed."""
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, ChecksumAlgorithm="SHA256",
                  ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())


def _holds(s3, bucket: str, key: str, path: Path, entry: dict) -> bool:
    """Whether bucket/key provably holds path's bytes: same size and a matching stored SHA-256."""
    head = _head(s3, bucket, key)
    if head is None or head["ContentLength"] != entry["size"]:
        return False
    stored = (head.get("ChecksumSHA256") or "").split("-")[0]  # S3 suffixes a composite with -<parts>
    if not stored:
        return False  # nothing the server vouches for: send it again
    if stored == _b64(entry["sha256"]):
        return True
    if not re.search(r"-\d+\"?$", head.get("ETag", "")):
        return False  # a single-part object with another checksum: other bytes
    first = _head(s3, bucket, key, PartNumber=1)
    if first is None or not first.get("PartsCount"):
        return False
    return stored == _composite(path, first["ContentLength"])


def exists(s3, bucket: str, key: str) -> bool:
    """Whether bucket/key is there (a denied HEAD counts as absent, as S3 answers without ListBucket)."""
    return _head(s3, bucket, key) is not None


def _head(s3, bucket: str, key: str, **kwargs) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **kwargs)
    except ClientError as e:
        # 403 is what S3 answers for a missing key without ListBucket permission.
        if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "403", "NotFound"}:
            return None
        raise


def _composite(path: Path, part_size: int) -> str:
    """S3's composite SHA-256 of a multipart object: the hash of its parts' hashes."""
    outer = hashlib.sha256()
    with path.open("rb") as f:
        while True:
            part, got = hashlib.sha256(), 0
            while got < part_size:
                chunk = f.read(min(_READ, part_size - got))
                if not chunk:
                    break
                part.update(chunk)
                got += len(chunk)
            if got:
                outer.update(part.digest())
            if got < part_size:  # the last part is the short one
                break
    return base64.b64encode(outer.digest()).decode()


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()
