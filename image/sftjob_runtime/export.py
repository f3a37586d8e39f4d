"""Copy the best checkpoint to spec.output.uri: a local/file:// directory or an S3 prefix.

Integrity: every file is uploaded with a SHA-256 checksum (multipart for
large files via boto3's transfer manager), then `sftjob-manifest.json`
(file list, sizes, sha256) is written LAST as the completion marker. A
re-run after an interruption skips files already present with the same
size and checksum, so exports are idempotent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime.errors import RuntimeFailure

MANIFEST = "sftjob-manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(src: Path, extra: dict | None = None) -> dict:
    """Relative path, size and sha256 of every file under src."""
    files = []
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        files.append({"path": p.relative_to(src).as_posix(), "size": p.stat().st_size, "sha256": _sha256(p)})
    return {"files": files, **(extra or {})}


def export_checkpoint(src: Path, uri: str, *, endpoint: str | None = None, region: str | None = None, extra: dict | None = None) -> str:
    """Export src to uri; returns the URI where the checkpoint now is."""
    manifest = build_manifest(src, extra)
    try:
        if uri.startswith("s3://"):
            return _to_s3(src, uri, manifest, endpoint, region)
        dest = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()
        return _to_dir(src, dest, manifest)
    except RuntimeFailure:
        raise
    except Exception as e:  # any storage error is an export failure with its cause
        raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: export to {uri} failed: {type(e).__name__}: {e}",
                             ExitCode.EXPORT_FAILED) from e


def _to_dir(src: Path, dest: Path, manifest: dict) -> str:
    if dest == src.resolve():
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return f"file://{dest}"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).unlink(missing_ok=True)  # not complete until rewritten
    for f in manifest["files"]:
        target = dest / f["path"]
        if target.is_file() and target.stat().st_size == f["size"] and _sha256(target) == f["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(src / f["path"], tmp)
        os.replace(tmp, target)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return f"file://{dest}"


def _to_s3(src: Path, uri: str, manifest: dict, endpoint: str | None, region: str | None) -> str:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None)
    transfer = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=8)

    def key(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    try:
        client.delete_object(Bucket=bucket, Key=key(MANIFEST))
    except ClientError:
        pass
    for f in manifest["files"]:
        k = key(f["path"])
        try:
            head = client.head_object(Bucket=bucket, Key=k)
            if head["ContentLength"] == f["size"] and head.get("Metadata", {}).get("sha256") == f["sha256"]:
                continue
        except ClientError:
            pass
        client.upload_file(
            str(src / f["path"]), bucket, k, Config=transfer,
            ExtraArgs={"Metadata": {"sha256": f["sha256"]}, "ChecksumAlgorithm": "SHA256"},
        )
    body = json.dumps(manifest, indent=2).encode()
    client.put_object(Bucket=bucket, Key=key(MANIFEST), Body=body,
                      ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
