"""Copy the best checkpoint to spec.output.uri: a local/file:// directory or an S3 prefix.

Integrity, in order:

* every file is hashed (SHA-256) once, before it is sent;
* small files go up in one PutObject carrying that SHA-256, so S3 rejects
  bytes that do not match it; large files go up as concurrent multipart
  uploads with a SHA-256 per part (boto3's transfer manager), which S3 checks
  part by part, and a failed multipart upload is aborted;
* `sftjob-manifest.json` (every file's path, size and sha256) is deleted
  first and written LAST: it is the completion marker, so a reader that sees
  it sees a whole checkpoint.

A re-run after an interruption skips a file only when the destination
proves it holds the same bytes: same size and, on S3, a stored SHA-256
checksum (whole-object or per-part composite) equal to the local one; on a
directory, the same sha256. Anything else is sent again.

Permissions needed on S3: PutObject, GetObject (HEAD), DeleteObject (the old
manifest), AbortMultipartUpload; ListBucket lets a missing object answer 404
rather than 403 (both are treated as "not there").
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure

MANIFEST = "sftjob-manifest.json"
PARTIAL = ".partial"
_READ = 1 << 20


@dataclass(frozen=True)
class TransferSettings:
    """How files travel to S3: a file of `multipart_threshold` bytes or more goes up in parts of `part_size`.

    Files are sent `concurrency` requests at a time, across files as well as
    across the parts of one file. Below the threshold a file is one PUT whose
    whole-object SHA-256 S3 verifies, so the checksum stored with it is the
    manifest's sha256; above it, parts upload in parallel and fail and retry
    one by one. S3 takes at most 5 GiB in one PUT, so the threshold must not
    exceed that.

    Why these numbers (benchmarks/export_throughput.py; 2 busy cores, moto
    over loopback, a 539 MB checkpoint, medians of 3 interleaved runs): there
    the server is the bottleneck and a multipart object costs it ~1.3-1.9x
    the CPU of one PUT. With the earlier defaults (multipart from 64 MiB,
    64 MiB parts) export_checkpoint reached 0.60-0.69x the throughput of a
    plain put_object loop (three runs); sending the weights in one PUT gave
    0.90x and 1.07x (two runs), while hashing every file and writing the
    manifest. In multipart, 16 MiB parts beat 64 MiB and 128 MiB ones every
    time (0.70-0.87x vs 0.59-0.69x), and AWS's own tools use parts that
    small. A checkpoint file above 1 GiB (a larger model: transformers 5
    writes up to 50 GB in one file) still goes up in parallel parts. A real
    S3 may favour parts sooner: run the benchmark with --endpoint against it
    before lowering the threshold.
    """

    multipart_threshold: int = 2**30
    part_size: int = 16 * 2**20
    concurrency: int = 8


def export_checkpoint(src: Path, uri: str, *, endpoint: str | None = None, region: str | None = None,
                      extra: dict | None = None, transfer: TransferSettings | None = None) -> str:
    """Export the checkpoint directory src to uri (s3://bucket/prefix, file://dir or a path); returns where it is now.

    Raises RuntimeFailure(ExportFailed) with a one-line message naming
    spec.output.uri on any failure; credentials never appear in it.
    """
    try:
        src = Path(src)
        if not src.is_dir():
            raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: nothing to export: checkpoint directory "
                                 f"{src} does not exist", ExitCode.EXPORT_FAILED)
        if uri.startswith("s3://"):
            return _to_s3(src, uri, extra or {}, endpoint, region, transfer or TransferSettings())
        if "://" in uri and not uri.startswith("file://"):
            raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: {uri!r} is neither s3://, file:// nor a "
                                 "path; use one of those", ExitCode.EXPORT_FAILED)
        dest = Path(uri.removeprefix("file://")).expanduser().resolve()
        return _to_dir(src, dest, extra or {})
    except RuntimeFailure as e:
        raise RuntimeFailure(e.reason, _one_line(str(e)), e.exit_code) from e.__cause__
    except Exception as e:  # any storage error is an export failure with its cause
        raise RuntimeFailure(Reason.EXPORT_FAILED, _one_line(f"spec.output.uri: export to {uri} failed: {_describe(e)}"),
                             ExitCode.EXPORT_FAILED) from e


# --- what a checkpoint is ---------------------------------------------------

def build_manifest(src: Path, extra: dict | None = None) -> dict:
    """Relative path, size and sha256 of every file under src (a previous manifest excluded), plus extra keys."""
    files = [{"path": rel, "size": (src / rel).stat().st_size, "sha256": sha256_of(src / rel)} for rel in _files(src)]
    return {"files": files, **(extra or {})}


def _files(src: Path) -> list[str]:
    """Relative POSIX paths of the files to export, sorted; fails on an empty directory."""
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    # Our own marker and leftovers of an interrupted copy are not part of the checkpoint.
    rels = [r for r in rels if r != MANIFEST and not r.endswith(PARTIAL)]
    if not rels:
        raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: nothing to export: checkpoint directory {src} "
                             "holds no files", ExitCode.EXPORT_FAILED)
    return rels


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_READ), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_bytes(files: list[dict], extra: dict) -> bytes:
    return json.dumps({"files": sorted(files, key=lambda f: f["path"]), **extra}, indent=2).encode()


# --- a directory --------------------------------------------------------------

def _to_dir(src: Path, dest: Path, extra: dict) -> str:
    src = src.resolve()
    if dest == src:  # exporting in place: only the marker is missing
        _write_atomically(dest / MANIFEST, json.dumps(build_manifest(src, extra), indent=2).encode())
        return f"file://{dest}"
    if dest.is_relative_to(src):
        raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: {dest} is inside the checkpoint directory "
                             f"{src}; choose a destination outside it", ExitCode.EXPORT_FAILED)
    rels = _files(src)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).unlink(missing_ok=True)  # not complete until rewritten
    files = []
    for rel in rels:
        source, target = src / rel, dest / rel
        entry = {"path": rel, "size": source.stat().st_size, "sha256": sha256_of(source)}
        files.append(entry)
        # A killed earlier run can leave a temp file beside an intact target.
        target.with_name(target.name + PARTIAL).unlink(missing_ok=True)
        if target.is_file() and target.stat().st_size == entry["size"] and sha256_of(target) == entry["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_atomically(source, target)
    for directory in {(dest / rel).parent for rel in rels}:
        _fsync(directory)  # the renames too must be on disk before the marker is
    _write_atomically(dest / MANIFEST, _manifest_bytes(files, extra))
    return f"file://{dest}"


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy through a temp file and rename, so a target is either absent, old or whole."""
    tmp = target.with_name(target.name + PARTIAL)
    try:
        shutil.copyfile(source, tmp)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomically(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + PARTIAL)
    try:
        tmp.write_bytes(data)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Flush a file's data (or a directory's entries) to disk.

    After a crash, a manifest must never vouch for files whose bytes did not
    make it to the disk: everything it lists is flushed before it is written.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- S3 -------------------------------------------------------------------------

def _to_s3(src: Path, uri: str, extra: dict, endpoint: str | None, region: str | None,
           settings: TransferSettings) -> str:
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config

    from sftjob_runtime.sources import split_s3

    bucket, prefix = split_s3(uri)
    prefix = prefix.strip("/")
    if not bucket:
        raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: {uri!r} names no bucket; use "
                             "s3://<bucket>/<prefix>", ExitCode.EXPORT_FAILED)
    where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    rels = _files(src)

    def key(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    client = boto3.client(
        "s3", endpoint_url=endpoint or None, region_name=region or None,
        # One pooled connection per concurrent request, or urllib3 discards and reopens them.
        # Retry count from AWS_MAX_ATTEMPTS / the AWS config, as for any AWS tool.
        config=Config(max_pool_connections=settings.concurrency + 2, retries={"mode": "standard"}),
    )
    config = TransferConfig(multipart_threshold=settings.multipart_threshold, multipart_chunksize=settings.part_size,
                            max_concurrency=settings.concurrency, preferred_transfer_client="classic")
    # Deleting a missing key succeeds; a missing bucket or a denied delete fails here, before any upload.
    client.delete_object(Bucket=bucket, Key=key(MANIFEST))

    files = []
    with create_transfer_manager(client, config) as manager:
        uploads = []
        # Largest first: hashing the small files overlaps with sending the big ones.
        for rel in sorted(rels, key=lambda r: -(src / r).stat().st_size):
            path = src / rel
            entry = {"path": rel, "size": path.stat().st_size, "sha256": sha256_of(path)}
            files.append(entry)
            if _holds(client, bucket, key(rel), path, entry):
                continue
            args: dict = {"Metadata": {"sha256": entry["sha256"]}, "ChecksumAlgorithm": "SHA256"}
            if entry["size"] < settings.multipart_threshold:
                # Our own hash, not one botocore takes later: S3 refuses bytes that differ from what we hashed.
                # (Multipart SHA-256 has no whole-object form: there botocore sends one per part.)
                args["ChecksumSHA256"] = _b64(entry["sha256"])
            uploads.append(manager.upload(str(path), bucket, key(rel), extra_args=args))
        for upload in uploads:
            upload.result()  # the first failure leaves the block, which cancels the rest
    body = _manifest_bytes(files, extra)
    client.put_object(Bucket=bucket, Key=key(MANIFEST), Body=body, ContentType="application/json",
                      ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())
    return where


def _holds(client, bucket: str, key: str, path: Path, entry: dict) -> bool:
    """Whether bucket/key provably holds path's bytes: same size and a matching stored SHA-256."""
    head = _head(client, bucket, key)
    if head is None or head["ContentLength"] != entry["size"]:
        return False
    stored = (head.get("ChecksumSHA256") or "").split("-")[0]  # S3 suffixes a composite with -<parts>
    if not stored:
        return False  # nothing the server vouches for: send it again
    if stored == _b64(entry["sha256"]):
        return True
    if not re.search(r"-\d+\"?$", head.get("ETag", "")):
        return False  # a single-part object with another checksum: other bytes
    first = _head(client, bucket, key, PartNumber=1)
    if first is None or not first.get("PartsCount"):
        return False
    return stored == _composite(path, first["ContentLength"])


def _head(client, bucket: str, key: str, **kwargs) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **kwargs)
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


# --- errors ---------------------------------------------------------------------------

_HINTS = {
    "NoSuchBucket": "create the bucket or fix spec.output.uri",
    "AccessDenied": "grant the credentials in spec.output.credentialsSecretRef write access to it",
    "InvalidAccessKeyId": "check the access key in spec.output.credentialsSecretRef",
    "SignatureDoesNotMatch": "check the secret key in spec.output.credentialsSecretRef",
    "ExpiredToken": "refresh the credentials in spec.output.credentialsSecretRef",
}


def _describe(e: Exception) -> str:
    """What went wrong and, where we can tell, what to change."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code") or "Error"
        text = f"{code} ({err.get('Message') or e.operation_name})"
        hint = _HINTS.get(code)
        return f"{text}; {hint}" if hint else text
    if isinstance(e, NoCredentialsError):
        return "no S3 credentials found; set spec.output.credentialsSecretRef"
    if isinstance(e, EndpointConnectionError):
        return f"{e}; check spec.output.endpoint"
    return f"{type(e).__name__}: {e}"


def _one_line(message: str) -> str:
    """Collapse whitespace and blank out any secret from the environment that found its way into a message."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return " ".join(message.split())
