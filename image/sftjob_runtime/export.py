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

import json
import os
import shutil
from pathlib import Path

from sftjob.vocabulary import ExitCode, Reason
from sftjob_runtime import s3
from sftjob_runtime.errors import RuntimeFailure, one_line
from sftjob_runtime.s3 import TransferSettings, sha256_of

MANIFEST = "sftjob-manifest.json"
PARTIAL = ".partial"
__all__ = ["MANIFEST", "TransferSettings", "build_manifest", "destination", "export_checkpoint", "sha256_of"]


def destination(uri: str) -> str:
    """Where an export to `uri` lands, as export_checkpoint names it: s3://bucket[/prefix], or file://<absolute dir>."""
    if uri.startswith("s3://"):
        bucket, prefix = s3.split(uri)
        return f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
    return f"file://{Path(uri.removeprefix('file://')).expanduser().resolve()}"


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
        return _to_dir(src, Path(destination(uri).removeprefix("file://")), extra or {})
    except RuntimeFailure as e:
        raise RuntimeFailure(e.reason, one_line(str(e)), e.exit_code) from e.__cause__
    except Exception as e:  # any storage error is an export failure with its cause
        raise RuntimeFailure(Reason.EXPORT_FAILED, one_line(f"spec.output.uri: export to {uri} failed: {s3.describe(e)}"),
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
    bucket, prefix = s3.split(uri)
    prefix = prefix.strip("/")
    if not bucket:
        raise RuntimeFailure(Reason.EXPORT_FAILED, f"spec.output.uri: {uri!r} names no bucket; use "
                             "s3://<bucket>/<prefix>", ExitCode.EXPORT_FAILED)

    def key(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    client = s3.client(endpoint, region, connections=settings.concurrency + 2)
    # Deleting a missing key succeeds; a missing bucket or a denied delete fails here, before any upload.
    client.delete_object(Bucket=bucket, Key=key(MANIFEST))
    entries = s3.upload_tree(client, bucket, src, _files(src), key, settings)
    s3.put_bytes(client, bucket, key(MANIFEST), _manifest_bytes(entries, extra))
    return destination(uri)
